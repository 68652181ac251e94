#!/usr/bin/env python3
"""Image preprocessing reference: diffusers' train_dreambooth.py pipeline on photos of many kinds.

Writes tests/data/images/:
  *.jpg, *.png        small images: both orientations, odd sizes, sizes whose centre-crop slack is 1 mod 4 (where Python's
                      round-half-to-even and rounding half away from zero part), upscaled ones, EXIF orientations 1-8,
                      grey, grey + alpha, palette with transparency, RGBA, 16-bit RGB and grey PNGs, CMYK JPEGs (with and
                      without Adobe's marker), a JPEG with junk bytes before a marker (a libjpeg warning Pillow tolerates)
                      and a truncated JPEG (which Pillow refuses)
  manifest.json       per file: the resolution, Pillow's mode, the expected tensors' names, the random crops' offsets, or
                      the error Pillow raises
  expected.safetensors  float32 [3, R, R] per case, computed as diffusers' DreamBooth script computes them:
                      exif_transpose(Image.open(f)), convert("RGB") unless RGB, Resize(R, BILINEAR), CenterCrop(R) or a
                      crop at RandomCrop's offsets, ToTensor(), Normalize([0.5], [0.5])
The random crops' offsets come from torchvision's RandomCrop.get_params under torch.manual_seed(0).
"""
import io
import json
import pathlib
import shutil
import struct
import zlib

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageOps
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.transforms import functional as F

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "images"
RNG = np.random.default_rng(20)


def content(w, h, channels=3):
    """Smooth structure plus noise: resampling differences show, JPEG stays small."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [128 + 70 * np.sin(x / (3 + c) + y / (5 + 2 * c) + c) + RNG.normal(0, 18, (h, w)) for c in range(channels)]
    return np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)


def png16(path, w, h, grey):
    """A 16-bit PNG (Pillow writes 16-bit grey only): filter 0 rows, big-endian samples."""
    channels = 1 if grey else 3
    y, x = np.mgrid[0:h, 0:w]
    data = np.stack([(x * 977 + y * 1531 + c * 7919) % 65536 for c in range(channels)], -1).astype(">u2")
    if grey:
        data[0, :, 0] = np.arange(w) % 300  # some values below 256 too
    raw = b"".join(b"\x00" + data[r].tobytes() for r in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0 if grey else 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_inputs():
    files = {}  # name -> resolution

    def save(name, image, resolution, **kw):
        image.save(OUT / name, **kw)
        files[name] = resolution

    # sizes: (w, h, R); slack = int(R * long / short) - R
    for w, h, R in [(21, 16, 16), (16, 21, 16), (23, 16, 16), (16, 23, 16), (132, 99, 16), (99, 132, 16), (37, 29, 16),
                    (101, 67, 16), (67, 101, 24), (45, 45, 16), (17, 16, 16), (16, 16, 16), (12, 20, 16), (8, 33, 16),
                    (199, 150, 24), (61, 200, 16)]:
        save(f"rgb-{w}x{h}.png", Image.fromarray(content(w, h)), R)
        save(f"rgb-{w}x{h}.jpg", Image.fromarray(content(w, h)), R, quality=90)
    # EXIF orientations
    base = Image.fromarray(content(30, 20))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif-{orientation}.jpg", base, 16, quality=92, exif=exif.tobytes())
    # modes
    save("grey.png", Image.fromarray(content(40, 27, 1)[..., 0], "L"), 16)
    save("grey.jpg", Image.fromarray(content(27, 40, 1)[..., 0], "L"), 16, quality=90)
    save("grey-alpha.png", Image.fromarray(content(33, 25, 2), "LA"), 16)
    save("rgba.png", Image.fromarray(content(25, 33, 4), "RGBA"), 16)
    palette = Image.fromarray(content(35, 22)).quantize(colors=37)
    palette.info["transparency"] = 3
    save("palette.png", palette, 16, transparency=3)
    save("cmyk-adobe.jpg", Image.fromarray(content(34, 26)).convert("CMYK"), 16, quality=90)
    png16(OUT / "rgb16.png", 29, 19, grey=False)
    files["rgb16.png"] = 16
    png16(OUT / "grey16.png", 19, 29, grey=True)
    files["grey16.png"] = 16
    # CMYK without Adobe's APP14 marker: the stored values are not inverted
    raw = (OUT / "cmyk-adobe.jpg").read_bytes()
    at = raw.find(b"\xff\xee")
    if at > 0:
        length = struct.unpack(">H", raw[at + 2:at + 4])[0]
        (OUT / "cmyk-plain.jpg").write_bytes(raw[:at] + raw[at + 2 + length:])
        files["cmyk-plain.jpg"] = 16
    # junk bytes between two header segments (after APP0): libjpeg warns ("3 extraneous bytes before marker 0xdb") and
    # decodes; Pillow skips them too
    raw = (OUT / "rgb-101x67.jpg").read_bytes()
    assert raw[2:4] == b"\xff\xe0"
    after_app0 = 4 + struct.unpack(">H", raw[4:6])[0]
    (OUT / "junk-before-marker.jpg").write_bytes(raw[:after_app0] + b"\x13\x37\x42" + raw[after_app0:])
    files["junk-before-marker.jpg"] = 16
    # truncated: Pillow refuses ("image file is truncated")
    (OUT / "truncated.jpg").write_bytes(raw[: len(raw) * 2 // 3])
    files["truncated.jpg"] = 16
    return files


def reference(path, R, offset=None):
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = transforms.Resize(R, interpolation=transforms.InterpolationMode.BILINEAR)(image)
    image = transforms.CenterCrop(R)(image) if offset is None else F.crop(image, offset[0], offset[1], R, R)
    return transforms.Normalize([0.5], [0.5])(transforms.ToTensor()(image)), image


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    files = make_inputs()
    torch.manual_seed(0)
    tensors, manifest = {}, {"versions": {"Pillow": PIL.__version__, "torchvision": torchvision.__version__,
                                          "torch": torch.__version__}, "files": {}}
    for name, R in sorted(files.items()):
        entry = {"resolution": R}
        try:
            with Image.open(OUT / name) as probe:
                entry["mode"] = probe.mode
            center, resized_crop = reference(OUT / name, R)
        except OSError as e:
            entry["error"] = str(e)
            manifest["files"][name] = entry
            print(f"{name}: Pillow refuses it: {e}")
            continue
        tensors[f"center.{name}"] = center.contiguous()
        entry["center"] = f"center.{name}"
        # random crops: RandomCrop's offsets on the resized image, for the images with a slack
        image = transforms.Resize(R, interpolation=transforms.InterpolationMode.BILINEAR)(
            ImageOps.exif_transpose(Image.open(OUT / name)).convert("RGB"))
        if max(image.size) > R and name.startswith("rgb-") and name.endswith(".png"):
            entry["random"] = []
            for k in range(3):
                top, left, _, _ = transforms.RandomCrop.get_params(image, (R, R))
                t, _ = reference(OUT / name, R, (top, left))
                tensors[f"random.{name}.{k}"] = t.contiguous()
                entry["random"].append({"top": top, "left": left, "tensor": f"random.{name}.{k}"})
        manifest["files"][name] = entry
    save_file(tensors, str(OUT / "expected.safetensors"))
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(files)} images, {len(tensors)} tensors, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
