"""Deliberate wrong changes to ``src/`` that the default test suite must catch.

Each entry names the exact text it replaces (it must occur exactly once in its file, which
``test_wrong_changes_listed.py`` checks in the default suite, so a refactor that moves the code
makes that test fail until the entry is updated) and the tests expected to fail when the change
is applied. ``run.py`` applies each change to a copy of ``src/`` and runs those tests.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    file: str          # relative to src/hrmedseg/
    old: str           # exact text, occurs exactly once in the file
    new: str


@dataclass(frozen=True)
class WrongChange:
    id: str
    description: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]    # pytest node ids or paths, relative to the repository root


WRONG_CHANGES: tuple[WrongChange, ...] = (
    WrongChange(
        "tiles-reversed",
        "tiles written back in reverse order within a batch: scrambled masks on large images",
        (Edit("inference/tiling.py",
              "for (y, x), p in zip(chunk, probs):",
              "for (y, x), p in zip(chunk, probs[::-1]):"),),
        ("tests/inference/test_tiling.py::test_stitched_identity_model_equals_direct_computation",
         "tests/inference/test_predict_tile_cli.py"),
    ),
    WrongChange(
        "box-xy-swapped",
        "box prompt x and y swapped before predict_boxes: wrong mask on non-square images",
        (Edit("serve/batching.py",
              "b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)",
              "b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]"),),
        ("tests/serve/test_api.py::test_box_prompt_mask_equals_predict_boxes_on_non_square_image",),
    ),
    WrongChange(
        "evaluate-shifted",
        "original-resolution prediction shifted 3 px before the metrics: wrong evaluate reports",
        (Edit("evaluation/evaluate.py",
              "m = compute_metrics(pr.labels, gt, nc, **opts)",
              "m = compute_metrics(np.roll(pr.labels, 3, axis=1), gt, nc, **opts)"),),
        ("tests/evaluation/test_evaluate.py",),
    ),
    WrongChange(
        "compare-other-resolution",
        "compare reads the other resolution's test metrics: a table with the wrong column",
        (Edit("experiments/compare.py",
              'out[k] = {"mean": s[resolution][k]["mean"], "std": s[resolution][k]["std"]}',
              'other = "original_resolution" if resolution == "model_resolution" else "model_resolution"\n'
              '            out[k] = {"mean": s[other][k]["mean"], "std": s[other][k]["std"]}'),),
        ("tests/experiments/test_compare.py::test_compare_rows_equal_each_runs_test_summary",),
    ),
    WrongChange(
        "distill-l1",
        "distillation loss MSE -> L1 in training and validation: a different objective than the paper's",
        (Edit("training/tasks/distill.py",
              'return {"total": F.mse_loss(out.float(), y)}',
              'return {"total": F.l1_loss(out.float(), y)}'),
         Edit("training/tasks/distill.py",
              'total += F.mse_loss(out.float(), y, reduction="none")',
              'total += F.l1_loss(out.float(), y, reduction="none")')),
        ("tests/training/test_distill.py::test_train_step_and_validation_are_the_mse_of_the_embeddings",),
    ),
)
