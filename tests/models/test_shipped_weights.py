"""Shipped pretrained weights: offline, checksummed, and applied only where they say."""
import pytest
import torch

import hrmedseg
from hrmedseg.models._pretrained import list_pretrained, resolve_weight, sha256_of


@pytest.mark.parametrize("w", list_pretrained(shipped=True), ids=lambda w: w.tag)
def test_every_shipped_file_matches_its_sha256(w):
    assert w.path().is_file(), f"{w.tag}: {w.path()} missing from the package"
    assert sha256_of(w.path()) == w.sha256


def test_hrmedseg_default_is_the_distilled_encoder_and_changes_only_encoder_and_neck():
    w = resolve_weight("hrmedseg", True)
    assert w.applies_to == "encoder,neck" and "MobileSAM" in w.teacher
    assert w.metrics["heldout_embedding_mse"] < w.metrics["heldout_mse_before"] / 100
    torch.manual_seed(0)
    plain = hrmedseg.create_model("hrmedseg", num_classes=2)
    torch.manual_seed(0)
    pre = hrmedseg.create_model("hrmedseg", num_classes=2, pretrained=True)
    assert pre.pretrained_weight == w.tag
    a, b = plain.state_dict(), pre.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    inside = {k for k in a if k.startswith(("encoder.", "neck."))}
    assert changed and changed <= inside                      # nothing outside encoder/neck
    assert len(changed) > 0.9 * len([k for k in inside if a[k].is_floating_point()])


@pytest.mark.parametrize("name", ["hrmedseg_lean", "herseg"])
def test_variants_sharing_the_encoder_take_the_distilled_weight(name):
    m = hrmedseg.create_model(name, pretrained=True)
    assert "distilled" in m.pretrained_weight


def test_inference_by_name_uses_the_whole_model_weight():
    assert resolve_weight("hrmedseg", "full").applies_to == "full"
    with pytest.raises(Exception, match="whole-model"):
        resolve_weight("herseg", "full")
