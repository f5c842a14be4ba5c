"""The ``hpcflow masks`` table and plot."""

from hpcflow.app.config import config_from_dict
from hpcflow.app.masks import describe_masks
from hpcflow.masks import build_schedule, describe_schedule, plot_schedule


def test_describe_lists_every_layer_and_the_coverage():
    sched = build_schedule((4, 4, 4), multi_update=2)
    text = describe_schedule(sched)
    lines = text.splitlines()
    for word in ("layer", "offset", "active links", "frozen loops", "coverage"):
        assert word in text
    assert sum(line.startswith(("0 ", "11 ")) for line in lines) == 2
    assert "8.33%" in text  # 1 / (4 Nd) of the links
    assert "plaq 4" in text  # usable active plaquettes per active link
    assert "plaq 67%" in text  # frozen plaquettes: (1 + 1/2) of 3 planes
    assert "updated 2 to 2 times" in text


def test_plot_writes_a_png(tmp_path):
    sched = build_schedule((4, 8))
    path = plot_schedule(sched, tmp_path / "sub" / "masks.png", layers=[0, 1, 2])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_describe_masks(tmp_path):
    cfg = config_from_dict({"lattice": {"shape": [4, 4, 4], "group": "U1"},
                            "action": {"beta": 1.0}})
    text = describe_masks(cfg, tmp_path / "m.png")
    assert "12 layers" in text and "plot written" in text
    assert (tmp_path / "m.png").stat().st_size > 1000
