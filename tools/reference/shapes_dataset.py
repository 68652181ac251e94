"""The demo model's training pictures: procedurally drawn, captioned 64x64 photos of toy objects.

Five object classes (ball, box, star, ring, kite) in ten colours, plain, striped or dotted, at varied sizes and
positions on a floor of one of eight colours, each with a caption that says so ("a photo of a red ball on a grey floor",
"a photo of a blue and white striped star", "a photo of a kite", ...). Drawn with numpy at twice the size and averaged
down, so edges are anti-aliased. Everything comes from one numpy Generator: the same seed draws the same set.

The demo's subject (include/dreambooth/data/demo_images.hpp: an orange ball with one white band and a dark eye) is never
drawn here: no ball has a band and an eye.
"""
import numpy as np

CLASSES = ["ball", "box", "star", "ring", "kite"]
COLOURS = {
    "red": (200, 40, 40), "orange": (235, 130, 30), "yellow": (235, 210, 50), "green": (50, 160, 60),
    "blue": (40, 80, 200), "purple": (130, 50, 170), "pink": (235, 130, 180), "white": (240, 240, 240),
    "black": (25, 25, 25), "brown": (120, 75, 40),
}
FLOORS = {
    "grey": (128, 128, 128), "white": (225, 225, 225), "blue": (90, 120, 190), "green": (90, 150, 90),
    "brown": (140, 100, 70), "beige": (215, 200, 160), "pink": (220, 170, 190), "black": (40, 40, 40),
}
PATTERNS = ["plain", "striped", "dotted"]


def _shape_coverage(kind, u, v, angle):
    """Inside-ness (bool) of the unit shape at object coordinates (u, v) in [-1, 1]."""
    c, s = np.cos(angle), np.sin(angle)
    ru, rv = c * u + s * v, -s * u + c * v
    r = np.hypot(u, v)
    if kind == "ball":
        return r <= 1.0
    if kind == "box":
        return (np.abs(ru) <= 0.8) & (np.abs(rv) <= 0.8)
    if kind == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if kind == "kite":
        return np.abs(ru) / 0.7 + np.abs(rv) <= 1.0
    if kind == "star":
        theta = np.arctan2(rv, ru)
        # a five-pointed star: the radius swings between 0.45 and 1 with the angle
        sector = np.mod(theta, 2 * np.pi / 5) / (2 * np.pi / 5)
        edge = 0.45 + 0.55 * np.abs(1 - 2 * sector)
        return r <= edge
    raise ValueError(kind)


def draw(rng, size=64):
    """One picture: (rgb uint8 [size, size, 3], caption)."""
    ss = 2 * size
    kind = CLASSES[rng.integers(len(CLASSES))]
    colour_names = list(COLOURS)
    colour = colour_names[rng.integers(len(colour_names))]
    floor_names = [f for f in FLOORS if f != colour]
    floor = floor_names[rng.integers(len(floor_names))]
    pattern = PATTERNS[rng.choice(3, p=[0.5, 0.25, 0.25])]
    second = [c for c in colour_names if c != colour][rng.integers(len(colour_names) - 1)]
    jitter = lambda rgb: np.clip(np.array(rgb, np.float32) + rng.normal(0, 10, 3), 0, 255)
    body, accent, ground = jitter(COLOURS[colour]), jitter(COLOURS[second]), jitter(FLOORS[floor])

    y, x = (np.mgrid[0:ss, 0:ss].astype(np.float32) + 0.5) / ss
    # the floor: its colour, darker toward the bottom, a lighter wall above a horizon
    horizon = rng.uniform(0.25, 0.5)
    shade = 0.85 + 0.3 * (1 - y)
    image = ground[None, None, :] * shade[..., None]
    wall = y < horizon
    image[wall] = 0.6 * image[wall] + 0.4 * 235
    radius = rng.uniform(0.16, 0.34)
    cx, cy = rng.uniform(radius, 1 - radius), rng.uniform(max(radius, horizon), 1 - radius)
    u, v = (x - cx) / radius, (y - cy) / radius
    angle = rng.uniform(-0.4, 0.4) if kind in ("box", "kite") else rng.uniform(0, 2 * np.pi)
    inside = _shape_coverage(kind, u, v, angle)
    obj = np.broadcast_to(body, (ss, ss, 3)).copy()
    if pattern == "striped":
        period = rng.uniform(0.35, 0.6)
        stripes = np.mod(v / period, 1.0) < 0.5
        obj[stripes] = accent
    elif pattern == "dotted":
        period = rng.uniform(0.45, 0.7)
        du, dv = np.mod(u / period, 1.0) - 0.5, np.mod(v / period, 1.0) - 0.5
        obj[np.hypot(du, dv) < 0.22] = accent
    if kind == "ball":  # shading: lit from the top left
        light = np.clip(1.15 - 0.35 * np.hypot(u + 0.4, v + 0.4), 0.6, 1.2)
        obj = obj * light[..., None]
    # a soft shadow on the floor under the object
    shadow = np.exp(-(((x - cx) / (1.1 * radius)) ** 2 + ((y - cy - 0.9 * radius) / (0.25 * radius)) ** 2))
    image = image * (1 - 0.35 * shadow[..., None])
    image = np.where(inside[..., None], obj, image)
    image = image.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    rgb = np.clip(image, 0, 255).round().astype(np.uint8)

    described = {"plain": f"{colour} {kind}", "striped": f"{colour} and {second} striped {kind}",
                 "dotted": f"{colour} {kind} with {second} dots"}[pattern]
    # captions with fewer details, so that "a photo of a ball" means any ball
    detail = rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])
    if detail == 0:
        caption = f"a photo of {_article(described)} {described} on a {floor} floor"
    elif detail == 1:
        caption = f"a photo of {_article(described)} {described}"
    elif detail == 2:
        caption = f"a photo of a {kind} on a {floor} floor"
    else:
        caption = f"a photo of a {kind}"
    return rgb, caption


def _article(words):
    return "an" if words[0] in "aeiou" else "a"


def draw_set(seed, count, size=64):
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), np.uint8)
    captions = []
    for i in range(count):
        images[i], caption = draw(rng, size)
        captions.append(caption)
    return images, captions
