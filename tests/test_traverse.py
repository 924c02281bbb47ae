"""`xcounter traverse` and `xcounter.traverse` on a tiny random Stable Diffusion pipeline."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_generator import tiny_generator_dir, tiny_pipeline
from xcounter.cli import main
from xcounter.errors import XCounterError
from xcounter.generators import SDGenerator
from xcounter.traverse import CSV_COLUMNS, curvature, swap_steps_for, traverse, write_traversal

STEPS = 4


@pytest.fixture(scope="module")
def generator():
    return SDGenerator(tiny_pipeline(image_channels=1, seed=0), steps=STEPS)


def test_traverse_gives_both_strips_and_the_curvature_table(generator):
    result = traverse(generator, "chest radiograph", "pleural_effusion", seed=3, points=3)
    assert result.swap_steps == [4, 2, 0] and result.strengths == [0.0, 0.5, 1.0]
    assert len(result.swap_images) == len(result.bezier_images) == 3
    assert result.swap_images[0].shape == (16, 16, 1)
    # the Bézier curve passes through its end points: no edit at t = 0, the full edit at t = 1
    np.testing.assert_allclose(result.bezier_images[0], result.swap_images[0], atol=1e-5)
    np.testing.assert_allclose(result.bezier_images[-1], result.swap_images[-1], atol=1e-5)
    assert result.nfe == STEPS + (STEPS - 2) + STEPS  # one shared prefix, then each swap from its step
    assert result.cosine_previous[0] is None and result.cosine_full_edit[0] is None
    assert result.cosine_full_edit[-1] == pytest.approx(1.0)
    assert result.shift_norm[0] == 0.0 and result.shift_norm[-1] > 0.0
    again = traverse(generator, "chest radiograph", "pleural_effusion", seed=3, points=3)
    np.testing.assert_array_equal(again.swap_images[-1], result.swap_images[-1])


def test_curvature_of_a_straight_and_a_bent_path():
    straight = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    previous, full, norms = curvature(straight)
    assert previous == [None, None, pytest.approx(1.0)] and full[1:] == [pytest.approx(1.0)] * 2
    assert norms == [0.0, 1.0, 2.0]
    bent = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert curvature(bent)[0][2] == pytest.approx(2 ** -0.5)


def test_swap_steps_are_evenly_spaced_from_no_edit_to_full_edit():
    assert swap_steps_for(4, None) == [4, 3, 2, 1, 0]
    assert swap_steps_for(50, 6) == [50, 40, 30, 20, 10, 0]
    with pytest.raises(XCounterError):
        swap_steps_for(10, 1)


def test_write_traversal_refuses_a_non_png_output(generator, tmp_path):
    result = traverse(generator, "chest radiograph", "pacemaker", points=2)
    with pytest.raises(XCounterError, match=r"\.png"):
        write_traversal(result, tmp_path / "strip.jpg")
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_png_and_csv(tmp_path, capsys):
    folder = tiny_generator_dir(tmp_path, image_channels=1)
    out = tmp_path / "figures" / "strip.png"
    code = main(["traverse", "--generator", str(folder), "--prompt", "chest radiograph", "--attribute",
                 "pleural_effusion", "--attributes", "cxr", "--seed", "1", "--steps", str(STEPS),
                 "--alpha", "2", "--points", "3", "--device", "cpu", "--out", str(out)])
    assert code == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height > 100
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [int(r["swap_step"]) for r in rows] == [4, 2, 0] and float(rows[-1]["cosine_full_edit"]) == 1.0
    printed = capsys.readouterr().out
    assert "cos full" in printed and str(out) in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["strip.csv", "strip.png"]  # no temp files left


def test_cli_rejects_an_unknown_attribute_with_one_line(tmp_path, capsys):
    out = tmp_path / "strip.png"
    code = main(["traverse", "--generator", "phantom-cxr", "--prompt", "chest radiograph", "--attributes", "cxr",
                 "--attribute", "pleural_efusion", "--out", str(out)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("Error:") and "pleural_effusion" in error
    assert not out.exists()


def test_cli_rejects_an_unknown_attribute_of_the_generator_domain(tmp_path, capsys):
    folder = tiny_generator_dir(tmp_path, image_channels=1)
    capsys.readouterr()  # drop the progress bar of saving the folder
    code = main(["traverse", "--generator", str(folder), "--prompt", "chest radiograph", "--attribute", "wings",
                 "--steps", "2", "--out", str(tmp_path / "strip.png")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "unknown attribute 'wings'" in error


def test_cli_rejects_an_unknown_device_with_one_line(tmp_path, capsys):
    code = main(["traverse", "--generator", "phantom-cxr", "--prompt", "chest radiograph", "--attribute",
                 "pleural_effusion", "--device", "tpu", "--out", str(tmp_path / "strip.png")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "device must be one of" in error
    assert list(tmp_path.iterdir()) == []
