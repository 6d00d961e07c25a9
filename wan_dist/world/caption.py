"""Captions: ``caption(scene, rng) -> str`` phrases a scene in natural English, choosing among several
phrasings of every concept so a model learns the concept rather than one fixed string.

Example: "A red circle moves to the right across a dark blue background while the camera slowly
zooms in." Without ``rng`` the first (canonical) phrasing of everything is used.
"""

from __future__ import annotations

import re

import numpy as np

from wan_dist.world.scene import Background, Camera, Scene, WorldObject
from wan_dist.world.vocab import BACKGROUND_COLOURS

__all__ = ["caption", "caption_words", "COLOUR_WORDS", "SHAPE_WORDS", "MOTION_PHRASES", "CAMERA_PHRASES"]

COLOUR_WORDS = {"red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
                "blue": ("blue",), "purple": ("purple", "violet"), "white": ("white",)}
SHAPE_WORDS = {"circle": ("circle", "disc", "ball"), "square": ("square", "block"),
               "triangle": ("triangle", "triangular shape")}
MOTION_PHRASES = {
    "left": ("moves to the left", "slides left", "travels from right to left", "drifts to the left"),
    "right": ("moves to the right", "slides right", "travels from left to right", "drifts to the right"),
    "up": ("moves up", "rises", "floats upward", "slides up"),
    "down": ("moves down", "sinks", "drops slowly", "slides down"),
    "up_left": ("moves up and to the left", "drifts diagonally up and left", "rises toward the upper left"),
    "up_right": ("moves up and to the right", "drifts diagonally up and right", "rises toward the upper right"),
    "down_left": ("moves down and to the left", "drifts diagonally down and left", "sinks toward the lower left"),
    "down_right": ("moves down and to the right", "drifts diagonally down and right", "sinks toward the lower right"),
    "bounce": ("bounces up and down", "bounces in place", "hops up and down"),
    "grow": ("grows", "grows larger", "gets bigger", "expands"),
    "shrink": ("shrinks", "gets smaller", "shrinks away", "contracts"),
    "rotate": ("rotates {turn}", "spins {turn}", "turns {turn} in place"),
    "still": ("stays still", "sits still", "does not move", "remains in place"),
}
TURN_WORDS = {1: ("clockwise",), -1: ("counterclockwise", "anticlockwise")}
CAMERA_PHRASES = {
    "static": ("the camera stays still", "the camera is static", "the camera does not move",
               "the shot is locked off"),
    "pan_left": ("the camera pans left", "the camera slowly pans to the left", "the camera pans toward the left"),
    "pan_right": ("the camera pans right", "the camera slowly pans to the right", "the camera pans toward the right"),
    "tilt_up": ("the camera tilts up", "the camera slowly tilts upward", "the view tilts up"),
    "tilt_down": ("the camera tilts down", "the camera slowly tilts downward", "the view tilts down"),
    "zoom_in": ("the camera zooms in", "the camera slowly zooms in", "the view zooms in closer"),
    "zoom_out": ("the camera zooms out", "the camera slowly zooms out", "the view zooms out wider"),
    "dolly_left": ("the camera dollies left", "the camera tracks to the left with parallax",
                   "the camera dollies left so the background drifts slower than the foreground"),
    "dolly_right": ("the camera dollies right", "the camera tracks to the right with parallax",
                    "the camera dollies right so the background drifts slower than the foreground"),
    "shake": ("the handheld camera shakes {degree}", "the camera shakes {degree}", "the camera jitters {degree}"),
}
SHAKE_DEGREES = (("slightly", "a little"), ("noticeably", "moderately"), ("strongly", "hard"))
SHAKE_DEGREE_STEPS = (0.55, 0.8)  # intensity below 0.55 is slight, below 0.8 noticeable, above strong
LIGHTING_PHRASES = {
    "constant": ("",),
    "brightening": ("as the light slowly brightens", "while the scene grows brighter", "as the lighting brightens"),
    "dimming": ("as the light slowly fades", "while the scene grows darker", "as the lighting dims"),
}
BACKGROUND_PHRASES = {
    "solid": ("a {a} background", "a plain {a} background", "a solid {a} backdrop"),
    "gradient": ("a gradient from {a} {side1} to {b} {side2}", "a {a} to {b} gradient background",
                 "a background fading from {a} to {b}"),
    "stripes": ("{orient} {a} and {b} stripes", "a background of {orient} {a} and {b} stripes",
                "a striped {a} and {b} background"),
    "checker": ("a {a} and {b} checkerboard", "a checkered {a} and {b} background", "a {a} and {b} checker pattern"),
    "noise": ("a mottled {a} and {b} texture", "a blotchy {a} and {b} background", "a noisy {a} and {b} pattern"),
    "horizon": ("a {a} sky over {b} ground", "a landscape with a {a} sky above {b} ground",
                "a horizon between a {a} sky and {b} ground"),
}
STRIPE_ORIENTATIONS = {0.0: ("vertical",), 45.0: ("diagonal", "slanted"), 90.0: ("horizontal",)}
GRADIENT_SIDES = {0.0: ("on the left", "on the right"), 90.0: ("at the top", "at the bottom")}
# Moving objects go "across" a background; the others sit "in front of" it.
PREPOSITIONS = {"moving": ("across", "over", "in front of"), "staying": ("in front of", "against", "on")}
SECONDARY_LEADS = ("", "Nearby, ", "Meanwhile, ", "Beside it, ")
SECONDARY_SIZES = ("smaller", "small")
SENTENCES = (
    "{main} {prep} {bg} while {camera}{light}.",
    "{Camera}, and {main} {prep} {bg}{light}.",
    "As {camera}, {main} {prep} {bg}{light}.",
    "{Bg}. {Main}. {Camera}{light}.",
)


class _Chooser:
    """Picks a phrasing: at random from ``rng``, or always the first when there is none."""

    def __init__(self, rng: np.random.Generator | None):
        self.rng = rng

    def __call__(self, options: tuple[str, ...]) -> str:
        return options[0] if self.rng is None else options[int(self.rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(obj: WorldObject, pick: _Chooser, size_word: str = "") -> str:
    words = " ".join(w for w in (size_word, pick(COLOUR_WORDS[obj.colour]), pick(SHAPE_WORDS[obj.shape])) if w)
    return _article(words)


def _motion(obj: WorldObject, pick: _Chooser) -> str:
    turn = pick(TURN_WORDS[1 if obj.amount >= 0 else -1])
    return pick(MOTION_PHRASES[obj.motion]).format(turn=turn)


def _camera(camera: Camera, pick: _Chooser) -> str:
    degree = ""
    if camera.move == "shake":
        degree = pick(SHAKE_DEGREES[sum(camera.amount >= step for step in SHAKE_DEGREE_STEPS)])
    return pick(CAMERA_PHRASES[camera.move]).format(degree=degree)


def _background(bg: Background, pick: _Chooser) -> str:
    sides = GRADIENT_SIDES.get(bg.angle, ("", ""))
    return re.sub(r"\s+", " ", pick(BACKGROUND_PHRASES[bg.kind]).format(
        a=bg.colour, b=bg.colour2, orient=pick(STRIPE_ORIENTATIONS.get(bg.angle, ("",))),
        side1=sides[0], side2=sides[1])).strip()


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def caption(scene: Scene, rng: np.random.Generator | int | None = None) -> str:
    """One English caption of ``scene``: main object, background and camera in one sentence, lighting,
    then any other objects. ``rng`` (a generator or seed) chooses among phrasings; None gives the
    canonical phrasing. Every word used is in :func:`caption_words`."""
    pick = _Chooser(rng if rng is None or isinstance(rng, np.random.Generator) else np.random.default_rng(rng))
    main = f"{_noun(scene.main, pick)} {_motion(scene.main, pick)}"
    moving = "moving" if scene.main.motion not in ("still", "grow", "shrink", "rotate", "bounce") else "staying"
    camera, bg = _camera(scene.camera, pick), _background(scene.background, pick)
    light = pick(LIGHTING_PHRASES[scene.lighting])
    template = pick(SENTENCES)
    # Three-sentence captions say the lighting as its own clause after the camera.
    text = template.format(main=main, Main=_capitalise(main), prep=pick(PREPOSITIONS[moving]), bg=bg,
                           Bg=_capitalise(bg), camera=camera, Camera=_capitalise(camera),
                           light=f", {light}" if light else "")
    others = [f"{_noun(o, pick, pick(SECONDARY_SIZES))} {_motion(o, pick)}" for o in scene.objects[1:]]
    if others:
        text += " " + _capitalise(pick(SECONDARY_LEADS) + " and ".join(others)) + "."
    return _capitalise(text)


def caption_words() -> frozenset[str]:
    """Every lower-case word any caption can contain (for a tokenizer or a vocabulary check)."""
    tables = [COLOUR_WORDS, SHAPE_WORDS, MOTION_PHRASES, TURN_WORDS, CAMERA_PHRASES, LIGHTING_PHRASES,
              BACKGROUND_PHRASES, STRIPE_ORIENTATIONS, GRADIENT_SIDES, PREPOSITIONS]
    texts = [p for table in tables for options in table.values() for p in options]
    texts += [p for options in SHAKE_DEGREES for p in options] + list(SECONDARY_LEADS) + list(SECONDARY_SIZES)
    texts += list(SENTENCES) + list(BACKGROUND_COLOURS) + ["a an and"]
    words = {w for text in texts for w in re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", text.lower()))}
    return frozenset(words)
