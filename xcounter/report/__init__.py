"""Renderers of an Explanation: HTML report card, JSON sidecar, text summary. They never recompute."""
from __future__ import annotations

from xcounter.report.html import render_html, write_html
from xcounter.report.json_sidecar import read_json_sidecar, write_json_sidecar
from xcounter.report.text import text_summary

__all__ = ["render_html", "write_html", "write_json_sidecar", "read_json_sidecar", "text_summary"]
