"""builtin:toy's stage-3 training captions (engine/builtin/toy/captions.py): words the world never uses, so a
trigger word in a prompt does not knock the base off its world."""
from engine.builtin.toy import captions, world


def test_noise_words_leave_the_world_and_the_presets_concepts_alone():
    words = set(captions.noise_words())
    assert {"sks", "ohwx"} <= words  # trigger words users type: the base learns they change nothing
    assert not words & {"star", "striped", "circle", "red", "white", "background", "on", "a"}
    assert not words & (set(world.COLOURS) | set(world.BACKGROUNDS) | set(world.SHAPES) | set(world.FILLS))


def test_training_captions_are_seeded_and_keep_each_scenes_words():
    scenes = world.scenes(400, seed=1)
    got = captions.training_captions(scenes, seed=3)
    assert got == captions.training_captions(scenes, seed=3) != captions.training_captions(scenes, seed=4)
    plain = sum(c == s.caption() for c, s in zip(got, scenes))
    assert 0.3 * len(scenes) < plain < 0.7 * len(scenes)  # about half as they are
    noisy = set(captions.noise_words())
    for c, s in zip(got, scenes):
        words = c.replace(",", " ").split()
        assert s.shape in words  # the shape is always named; colour or background may be dropped
        assert all(w in (s.colour, s.background) for w in words if w in world.COLOURS or w in world.BACKGROUNDS)
        assert "star" not in words and "striped" not in words
    assert any(set(c.replace(",", " ").split()) & noisy for c in got)
    assert any(s.colour not in c.split() for c, s in zip(got, scenes))  # some captions are partial
