"""Plain functions and constants the tests share, by subject; the fixtures stay in conftest.py. Test
modules import from here, never from conftest.py or from one another."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
