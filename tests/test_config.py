"""What a config trains (`effective_config`, `fingerprint`), what a study holds fixed
(`recipe`), the notes for keys that have no effect, and the value checks of the newer keys."""

from pathlib import Path

import pytest

from harness import edge, record
from harness.config import Config, ConfigError, ScheduleConfig, check_values, compose_config, reference
from harness.identity import effective_config, unused_notes

from helpers.config import check_refused, resolved


def fp(*overrides: str) -> str:
    return resolved(compose_config(*overrides)).fingerprint


def rc(*overrides: str) -> str:
    return resolved(compose_config(*overrides)).recipe


SHORTCUTS = ("zero_pad", "projection", "full_projection")


def test_a_plain_nets_shortcut_does_not_change_what_it_trains():
    assert len({fp("residual=false", f"shortcut={s}") for s in SHORTCUTS}) == 1
    assert fp("residual=false", "shortcut=projection") == fp("residual=false")  # auto
    assert len({fp("residual=true", f"shortcut={s}") for s in SHORTCUTS}) == 3
    trained, unused = effective_config(compose_config("residual=false", "shortcut=projection"), "fp32")
    assert trained["shortcut"] == "none" and "shortcut" in unused


@pytest.mark.parametrize(
    "unused, used, key",
    [
        (["optimizer=adam"], ["optimizer=sgd"], ["optimizer.momentum=0.5", "optimizer.momentum=0.95"]),
        (["dataset.augment=false"], ["dataset.augment=true"], ["dataset.pad=2", "dataset.pad=4"]),
        (
            ["schedule.warmup_lr=null"],
            ["schedule.warmup_lr=0.01"],
            ["schedule.warmup_until_error=0.5", "schedule.warmup_until_error=0.8"],
        ),
        (
            ["schedule.warmup_lr=null"],
            ["schedule.warmup_lr=0.01"],
            ["schedule.warmup_max_iterations=10", "schedule.warmup_max_iterations=50"],
        ),
        (
            ["schedule.warmup_lr=null"],
            ["schedule.warmup_lr=0.01"],
            ["schedule.warmup_min_depth=0", "schedule.warmup_min_depth=20"],
        ),
        # A net below schedule.warmup_min_depth does not warm up: its warm-up lr is unused.
        (
            ["schedule.warmup_min_depth=56"],
            ["schedule.warmup_min_depth=20"],
            ["schedule.warmup_lr=0.01", "schedule.warmup_lr=0.02"],
        ),
    ],
    ids=["adam-momentum", "pad-without-augment", "until-error", "max-iterations", "min-depth", "below-min-depth"],
)
def test_keys_that_have_no_effect_leave_the_fingerprint(unused, used, key):
    assert fp(*unused, key[0]) == fp(*unused, key[1])
    assert fp(*used, key[0]) != fp(*used, key[1])  # where the key is used, it counts


def test_family_auto_and_its_resolved_family_are_one_net():
    assert fp("depth=20", "family=auto") == fp("depth=20", "family=cifar")
    assert fp("depth=50", "family=auto") == fp("depth=50", "family=imagenet")
    assert fp("depth=50", "family=auto") != fp("depth=50", "family=cifar")  # depth 50 is 6n+2 too


@pytest.mark.parametrize("depth", [56, 110, 164])
def test_p2s_bottleneck_net_is_another_net_than_p1s_of_the_same_depth(depth):
    basic, bottleneck = (
        resolved(compose_config(f"depth={depth}", f"family={family}")) for family in ("auto", "cifar_bottleneck")
    )
    assert basic.fingerprint == fp(f"depth={depth}", "family=cifar") != bottleneck.fingerprint
    assert (basic.name, bottleneck.name) == (f"resnet-{depth}", f"resnet-{depth}-bottleneck-B")  # P2: B, as auto says
    assert bottleneck.trained["family"] == "cifar_bottleneck" and bottleneck.config.shortcut == "projection"


def test_a_job_is_its_config_typed_and_resolved_beside_what_was_asked():
    job = resolved(compose_config("depth=56", "precision=fp32", "threads=1"))
    assert isinstance(job.config, Config) and isinstance(job.config.schedule, ScheduleConfig)
    assert (job.config.family, job.config.shortcut, job.config.precision, job.config.threads) == (
        "cifar", "zero_pad", "fp32", 1
    )  # fmt: skip
    assert (job.requested.family, job.requested.shortcut) == ("auto", "auto")  # what was asked, only that
    plain = resolved(compose_config("depth=20", "residual=false", "precision=fp32"))
    assert plain.config.shortcut == "none" and plain.name == "plain-20"
    shallow = resolved(compose_config("depth=20", "schedule.warmup_lr=0.01", "schedule.warmup_min_depth=110"))
    assert shallow.config.schedule.warmup_lr is None  # no warm-up below its depth: the one rule, in identity


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["depth=165", "family=cifar_bottleneck"], r"depth=165 is not valid for family=cifar_bottleneck, whose depths "
         r"are 9n\+2 \(P2's 164 and 1001, any n >= 1\); family=cifar takes 6n\+2"),
        (["depth=1001"], r"depth=1001 is not valid; .*, or, with family=cifar_bottleneck, 9n\+2"),
        (["family=bottleneck"], r"family='bottleneck' is not valid; use auto .*cifar_bottleneck .*imagenet"),
    ],
)  # fmt: skip
def test_a_depth_its_family_cannot_have_is_refused_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_values(compose_config(*overrides))


def test_where_and_how_a_run_is_tracked_leaves_the_fingerprint():
    # At a named precision: what precision=auto is, the edge decides per thread count.
    assert fp("precision=fp32") == fp(
        "precision=fp32",
        "tracking.uri=sqlite:////tmp/elsewhere.db",
        "threads=3",
        "device=cpu",
        "dataset.root=/data",
        "report.confidence=0.9",
        "tracking.figures=false",
    )


@pytest.mark.parametrize(
    "override",
    ["schedule.iterations=500", "seed=1", "depth=56", "residual=false", "activation=pre", "optimizer.lr=0.05"],
)
def test_what_is_trained_changes_the_fingerprint(override):
    assert fp(override) != fp()


@pytest.mark.parametrize(
    "override",
    ["depth=56", "residual=false", "shortcut=projection", "activation=pre", "seed=2", "family=cifar", "threads=1"],
)
def test_the_nets_of_one_study_share_its_recipe(override):
    assert rc(override, "precision=fp32") == rc("precision=fp32")


@pytest.mark.parametrize(
    "override", ["schedule.iterations=500", "dataset=cifar10", "optimizer=adam", "schedule.batch_size=32"]
)
def test_a_different_budget_or_data_set_is_a_different_recipe(override):
    assert rc(override) != rc()


def test_the_warmup_rule_is_part_of_the_recipe_even_for_nets_it_skips():
    assert rc("+experiment=paper_cifar10", "depth=20") == rc("+experiment=paper_cifar10", "depth=110")
    every_depth = ("+experiment=paper_cifar10", "schedule.warmup_min_depth=0")
    assert rc(*every_depth, "depth=20") == rc(*every_depth, "depth=110")
    assert rc(*every_depth, "depth=20") != rc("+experiment=paper_cifar10", "depth=20")  # another warm-up rule
    assert rc("+experiment=paper_cifar10") != rc("+experiment=paper_cifar10", "schedule.warmup_lr=null")


def test_notes_name_what_the_user_set_and_this_net_does_not_use():
    overrides = ["residual=false", "shortcut=projection"]
    notes = unused_notes(resolved(compose_config(*overrides)), overrides)
    assert len(notes) == 1
    assert "note: shortcut has no effect" in notes[0] and "plain net" in notes[0]
    assert (
        unused_notes(resolved(compose_config("residual=false")), ["residual=false"]) == []
    )  # the user said nothing of shortcuts
    assert unused_notes(resolved(compose_config("residual=true", "shortcut=projection")), ["shortcut=projection"]) == []
    adam = ["optimizer=adam", "optimizer.momentum=0.5"]
    (note,) = unused_notes(resolved(compose_config(*adam)), adam)
    assert "optimizer.momentum" in note and "adam" in note


def test_p2s_shortcut_parameters_count_only_where_the_shortcut_uses_them():
    assert fp("shortcut=scaling", "shortcut_lambda=0.5") != fp("shortcut=scaling", "shortcut_lambda=0.9")
    assert fp("shortcut=exclusive_gating", "gate_bias=0") != fp("shortcut=exclusive_gating", "gate_bias=-6")
    assert fp("shortcut=dropout", "shortcut_dropout=0.5") != fp("shortcut=dropout", "shortcut_dropout=0.2")
    assert fp("shortcut_lambda=0.9", "gate_bias=-3", "shortcut_dropout=0.1") == fp()  # identity uses none
    assert fp("residual=false", "shortcut=scaling", "shortcut_lambda=0.9") == fp("residual=false")
    assert fp("shortcut=scaling") != fp("shortcut=frozen_gating") != fp()
    assert rc("shortcut=scaling", "shortcut_lambda=0.9") == rc()  # the nets of one study
    trained, unused = effective_config(compose_config("shortcut=exclusive_gating"), "fp32")
    assert trained["gate_bias"] == -6.0 and "shortcut_lambda" not in trained and "shortcut_lambda" in unused


@pytest.mark.parametrize(
    "overrides, key, why",
    [
        (["shortcut_lambda=0.9"], "shortcut_lambda", "shortcut=zero_pad does not use it"),
        (["shortcut=scaling", "gate_bias=-6"], "gate_bias", "shortcut=scaling does not use it"),
        (["residual=false", "shortcut_dropout=0.2"], "shortcut_dropout", "plain net (residual=false) has no shortcuts"),
    ],
)
def test_a_p2_parameter_the_net_does_not_use_gets_a_note(overrides, key, why):
    (note,) = unused_notes(resolved(compose_config(*overrides)), overrides)
    assert note.startswith(f"note: {key} has no effect here") and why in note


@pytest.mark.parametrize(
    "override, message",
    [
        ("shortcut_lambda=0", "shortcut_lambda=0.0 is not valid; use 0 < lambda <= 1 .*residual=false"),
        ("shortcut_lambda=1.5", "shortcut_lambda=1.5 is not valid"),
        ("shortcut_dropout=1", "shortcut_dropout=1.0 is not valid; use a rate 0 <= rate < 1"),
        ("gate_bias=nan", "gate_bias=nan is not valid"),
        ("activation=middle", "activation=middle is not valid; use post .*bn_after_add .*relu_only_pre .*pre"),
        ("shortcut=gated", "shortcut=gated is not valid; .*exclusive_gating"),
        ("dataset.resize=3", "dataset.resize=3"),
        ("dataset.normalize=foo", "dataset.normalize=foo"),
        ("schedule.warmup_max_iterations=0", "schedule.warmup_max_iterations=0"),
        ("schedule.final_train_subset=0", "schedule.final_train_subset=0"),
        ("report.confidence=1.5", "report.confidence=1.5"),
        ("report.min_effect=-1", "report.min_effect=-1"),
    ],
)
def test_value_checks_of_the_newer_keys(override, message):
    with pytest.raises(ConfigError, match=message):
        check_values(compose_config(override))


@pytest.mark.parametrize(
    "override",
    [
        "dataset.resize=96",
        "dataset.normalize=none",
        "schedule.warmup_max_iterations=10",
        "schedule.final_train_subset=100",
        "report.confidence=0.9",
        "dataset.resize=null",
    ],
)
def test_valid_values_of_the_newer_keys_pass(override):
    check_values(compose_config(override))


@pytest.mark.parametrize(
    "override, message",
    [
        ("shortcut=helpers.nowhere.REZERO", "shortcut=helpers.nowhere.REZERO cannot be imported (No module named "),
        ("shortcut=helpers.joins.REZEROS", "shortcut=helpers.joins.REZEROS cannot be imported (module 'helpers.joins'"),
        ("shortcut=helpers.joins.ReZero", "shortcut=helpers.joins.ReZero is a type, not a harness.models.Shortcut"),
    ],
)
def test_a_shortcut_of_your_own_that_is_no_shortcut_is_refused_before_training(override, message):
    with pytest.raises(ConfigError) as refused:
        check_values(compose_config(override))
    assert message in str(refused.value)


def test_a_case_of_p2s_table_1_is_set_without_a_plus_and_trains_what_its_keys_say():
    """p2_shortcut's default is none, which leaves every other config as it was."""
    assert fp("p2_shortcut=dropout") == fp("shortcut=dropout", "shortcut_dropout=0.5") != fp()
    assert fp("p2_shortcut=identity") == fp("shortcut=zero_pad") == fp()
    # The case's keys replace conf/config.yaml's; a key on the command line replaces the case's.
    assert fp("p2_shortcut=conv1x1") == fp("shortcut=full_projection")
    assert fp("p2_shortcut=conv1x1", "shortcut=projection") == fp("shortcut=projection")
    assert fp("+experiment=p2_shortcuts", "p2_shortcut=exclusive_gating") == fp(
        "+experiment=p2_shortcuts", "shortcut=exclusive_gating", "gate_bias=-6"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "p2_shortcut=identity,skipinit"], "p2_shortcut=skipinit is not valid: conf/p2_shortcut/ has no "
         "skipinit.yaml; use one of constant_scaling, conv1x1, dropout, exclusive_gating, frozen_gating, identity, "
         "shortcut_only_gating."),
        (["+p2_shortcut=dropout"], "set it without the +: p2_shortcut=dropout."),
        (["+experiment=p2_shortcut"], "experiment=p2_shortcut is not valid: conf/experiment/ has no p2_shortcut.yaml"),
        (["-m", "p2_shortcut=identity,dropout", "+experiment=p2_units", "dataset=cifar10"], None),
    ],
)  # fmt: skip
def test_a_config_groups_option_is_one_of_its_files(args, message):
    check_refused(args, message)


def test_the_configuration_reference_is_the_schemas():
    """docs/configuration.md is generated from the schema; regenerate it when a key changes:
    python -m harness.config > docs/configuration.md"""
    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert page == reference(), "docs/configuration.md is stale: python -m harness.config > docs/configuration.md"
    assert all(f"`{key}`" in page for key in ("depth", "schedule.iterations", "dataset.resize", "report.confidence"))


def test_precision_is_resolved_and_tells_nets_and_recipes_apart():
    here = edge.decide(compose_config()).precision
    assert resolved(compose_config("precision=auto")).trained["precision"] == here
    with pytest.raises(ValueError, match="precision=auto reached a job's identity undecided"):
        effective_config(compose_config("precision=auto"))  # a pure function: the edge decides auto
    assert fp("precision=auto") == fp(f"precision={here}") and rc("precision=auto") == rc(f"precision={here}")
    assert fp() == fp("precision=auto")  # the default
    assert fp("precision=bf16") != fp("precision=fp32") and rc("precision=bf16") != rc("precision=fp32")


def test_compile_and_deterministic_are_how_a_net_is_run_not_which():
    assert fp("compile=true") == fp() == fp("deterministic=false") == fp("compile=max-autotune")
    params = record.job_params(
        resolved(compose_config("compile=reduce-overhead", "deterministic=false")), record.Machine()
    )
    assert params["compile"] == "reduce-overhead" and params["deterministic"] is False


@pytest.mark.parametrize("value", ["fast", "yes"])
def test_a_bad_compile_mode_names_the_valid_ones(value):
    with pytest.raises(ConfigError, match=f"compile={value} is not valid; use false, true .*max-autotune"):
        check_values(compose_config(f"compile={value}"))
