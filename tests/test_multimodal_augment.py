"""`augment=dihedral`: every training image goes through one of the square's 8 symmetries."""
import pytest
import torch

from llmlab.errors import UserError
from llmlab.multimodal.train import ContrastiveConfig, build_model, dihedral
from llmlab.multimodal.vit import ViTConfig


def _d4(img):
    """The 8 elements of D4 written out by hand: rotations by 0/90/180/270 degrees, and their mirrors."""
    rots = [torch.rot90(img, k, dims=(-2, -1)) for k in range(4)]
    return rots + [r.flip(-1) for r in rots]


def test_dihedral_draws_each_of_the_eight_symmetries():
    img = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4)  # no symmetry of its own
    group = _d4(img)
    assert len({tuple(g.flatten().tolist()) for g in group}) == 8
    out = dihedral(img.expand(800, 3, 4, 4).clone(), torch.Generator().manual_seed(0))
    hits = [next(k for k, g in enumerate(group) if torch.equal(o, g)) for o in out]  # StopIteration: not in D4
    counts = torch.bincount(torch.tensor(hits), minlength=8)
    assert counts.min() > 60, counts  # each of the 8 about 100 times


def test_dihedral_is_refused_where_it_changes_the_caption():
    vit = ViTConfig(image_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(UserError, match="easy_vqa only"):
        build_model(ContrastiveConfig(dataset="digits", augment="dihedral", vision=vit))
    with pytest.raises(UserError, match="augment must be"):
        build_model(ContrastiveConfig(dataset="digits", augment="crop", vision=vit))
