"""Engine options that `xcounter explain` and `xcounter audit` share, defined once so both say the same."""
from __future__ import annotations

import click

#: `xcounter.search.ANCHORS`, spelled here so the command line loads without torch (a test keeps them equal)
ANCHOR_CHOICES = ("scan", "reconstruction")

anchor_option = click.option(
    "--anchor", type=click.Choice(ANCHOR_CHOICES),
    help="What edits are drawn onto: scan (the scan plus what the edit changed; what the inversion lost stays the "
         "scan's) or reconstruction (the generator's own output); default: the generator's.")

prune_option = click.option(
    "--prune/--no-prune", default=None,
    help="Show each flip with only the parts of the generator's edit the decision needs, the rest of the scan "
         "unedited (default); --no-prune shows the whole generator sample. Verdicts do not depend on it.")

removal_check_option = click.option(
    "--removal-check/--no-removal-check", default=None,
    help="Credit an addition that flips the decision only through the pixels of another attribute's flipping "
         "removal (an 'add hair' that wipes the ruler) to that removal: verdict 'mediated' (default on).")
