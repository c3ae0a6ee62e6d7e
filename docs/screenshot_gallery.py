"""Renamed: docs/screenshots.py retakes every README screenshot (the gallery among them) in one command.

    .venv/bin/python docs/screenshots.py
"""
import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("screenshots.py")), run_name="__main__")
