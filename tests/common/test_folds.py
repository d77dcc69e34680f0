"""read_fold: the one reader of make_folds' document, for the MAE fine-tuning and the temporal
stages; a fold that is missing, empty or leaks a video from train into validation is refused."""
import pytest

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.folds import read_fold
from affect_pipeline.common.runtime import write_json

FOLDS = {"official": {"train": ["b", "a"], "validation": ["c"]},
         "fold1": {"train": ["a", "c"], "validation": ["b"]},
         "fold2": {"train": ["a", "b"], "validation": ["b", "c"]},
         "fold3": {"train": [], "validation": ["a"]}}


@pytest.fixture
def folds(tmp_path):
    path = tmp_path / "AU.json"
    write_json(path, {"task": "AU", "k": 3, "seed": 0, "test": ["t1", "t0"], "folds": FOLDS})
    return path


def test_a_fold_is_its_sorted_lists_and_the_tasks_test_videos(folds):
    split = read_fold(folds, "official")
    assert split == (["a", "b"], ["c"], ["t1", "t0"])
    assert (split.train, split.val, split.test) == (["a", "b"], ["c"], ["t1", "t0"])
    assert read_fold(folds, "fold1").val == ["b"]


@pytest.mark.parametrize("fold, needle", [
    ("fold2", r"fold 'fold2' lists \['b'\] in both train and validation"),
    ("fold3", "fold 'fold3' has an empty train or validation list"),
    ("fold9", r"no fold 'fold9' \(has \['fold1', 'fold2', 'fold3', 'official'\]\)"),
])
def test_a_bad_fold_is_refused_naming_the_file(folds, fold, needle):
    with pytest.raises(PipelineError, match=needle) as e:
        read_fold(folds, fold)
    assert str(folds) in str(e.value)
