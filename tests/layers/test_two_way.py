import torch

from hrmedseg.layers import MultiscalePooling, TwoWayTransformer


def test_shapes_and_pooling_changes_result():
    t = TwoWayTransformer(2, 32, 4, 64)
    img, pe, tok = torch.randn(2, 32, 6, 5), torch.randn(1, 32, 6, 5), torch.randn(2, 3, 32)
    q, k = t(img, pe, tok)
    assert q.shape == (2, 3, 32) and k.shape == (2, 30, 32)
    t.key_mixer = MultiscalePooling((3,))
    q2, _ = t(img, pe, tok)
    assert not torch.allclose(q, q2)
