#!/usr/bin/env python3
"""CLIP tokenizer vocabulary and reference token ids.

1. The vocabulary: open_clip's PyPI wheel ships OpenAI's original BPE file (bpe_simple_vocab_16e6.txt.gz, MIT
   licence, see tests/data/clip_tokenizer/LICENSE). vocab.json and merges.txt follow from it exactly as CLIP defines
   them: the 256 byte symbols, the same with "</w>", the 48,894 merges joined, then <|startoftext|>, <|endoftext|>
   (49,408 entries).
2. prompts.json: >= 300 prompts (Unicode letters and accents, emoji, digits, punctuation runs, contractions, extra
   whitespace, HTML entities, the empty prompt, prompts over 77 tokens) with transformers' CLIPTokenizer ids
   (padding="max_length", max_length=77, truncation=True) and the untruncated token count.

transformers' slow CLIPTokenizer cleans text with ftfy when it is installed and with its BasicTokenizer otherwise;
the reference is made WITHOUT ftfy (it is neither a transformers nor a diffusers dependency), and the script
refuses to run if ftfy is importable.
"""
import gzip
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import zipfile

import transformers
from transformers import CLIPTokenizer

OPEN_CLIP = "open_clip_torch==2.29.0"
OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "clip_tokenizer"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_vocabulary():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", OPEN_CLIP, "-d", tmp], check=True)
        wheel = next(pathlib.Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            bpe = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")
            licence = z.read("open_clip_torch-2.29.0.dist-info/licenses/LICENSE").decode("utf-8")
    merges = [tuple(line.split()) for line in bpe.split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    (OUT / "LICENSE").write_text(
        "vocab.json and merges.txt are derived from bpe_simple_vocab_16e6.txt.gz, OpenAI's CLIP BPE vocabulary as shipped in\n"
        f"the {OPEN_CLIP} wheel, under the licence below.\n\n" + licence, encoding="utf-8")
    return len(vocab), len(merges)


def prompts():
    fixed = [
        "", " ", "a photo of sks dog", "A PHOTO OF SKS DOG", "a photo of a dog", "  a   photo\tof\na  dog  ",
        "a photo of sks dog in the snow, 4k, highly detailed", "it's a dog's life; we're sure they'll've done it",
        "I'M HERE, YOU'RE THERE, SHE'D GO", "don't won't can't shouldn't", "café crème brûlée naïve résumé", "Ærøskøbing Øresund Ålesund",
        "straße groß Maßstab", "İstanbul ıi", "ΟΔΥΣΣΕΥΣ Σίσυφος", "Москва и Санкт-Петербург", "東京タワーの写真", "中文提示词测试 一只狗",
        "한국어 프롬프트", "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ", "ภาษาไทย", "emoji 🐶🐱 dog 🐕‍🦺 and 👍🏽 thumbs",
        "🔥🔥🔥", "rainbow 🏳️‍🌈 flag", "numbers 1234567890 3.14159 1,000,000", "٣٤٥ ٠١٢ arabic digits", "½ ¾ ² ³ Ⅻ",
        "punctuation!!! ??? ... --- ___ *** ###", "(parenthesis) [brackets] {braces} <angles>", "a,b;c:d.e!f?g",
        "quotes \"double\" 'single' `back`", "path/to/file.png C:\\Users\\x", "email@example.com http://x.org/?a=1&b=2",
        "&amp; &lt;tag&gt; &quot;q&quot; &#39;", "tab\tseparated\tvalues", "new\nline\r\nendings", "zero\u200bwidth\u200dspace",
        "non\u00a0breaking\u2003spaces", "control\x07char\x1b", "<|startoftext|>a dog<|endoftext|>", "<|endoftext|>", "sks",
        "a photo of sks person wearing a hat", "masterpiece, best quality, ultra-detailed, 8k uhd, dslr, soft lighting",
        "(masterpiece:1.2), [worst quality], {{extra}}", "x" * 200, "word " * 100, "a " * 76, "a " * 75, "a " * 74,
        "the quick brown fox jumps over the lazy dog " * 4, "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "ligature ﬁ ﬂ ﬀ", "e\u0301 combining acute",
        "Ǆ ǅ ǆ titlecase", "dog-shaped cookie", "state-of-the-art", "o'clock rock'n'roll", "'s 't 're 've 'm 'll 'd",
        "'S 'T 'RE 'VE 'M 'LL 'D", "'''", "''s", "a''b", "¿dónde está? ¡olé!", "•bullet •points", "—em dash– en dash",
        "©®™ symbols", "€100 £50 ¥1000 $5", "100% 50°C", "𝓯𝓪𝓷𝓬𝔂 𝕥𝕖𝕩𝕥", "ℌ𝔢𝔩𝔩𝔬", "a\u0000b", "\ufeffbom at start",
    ]
    rng = random.Random(1234)
    pieces = ["dog", "cat", "sks", "photo", "painting", "of", "a", "the", "in", "Paris", "MOUNTAIN", "Snow", "café", "naïve",
              "Zürich", "東京", "🐶", "🎨", "👍🏽", "123", "4k", "8K", "3.5", "!!", "?!", "...", ",", ";", ":", "--", "(", ")", "[", "]",
              "it's", "dog's", "we're", "they've", "I'm", "you'll", "she'd", "don't", "&amp;", "'", '"', "  ", "\t", "\n",
              "Ωμέγα", "Ёлка", "über", "ﬁne", "ß", "İ", "x̃", "½", "Ⅳ", "٣"]
    generated = []
    while len(fixed) + len(generated) < 330:
        n = rng.randint(1, 40 if rng.random() < 0.9 else 120)
        sep = rng.choice([" ", " ", " ", "", "  ", ", "])
        generated.append(sep.join(rng.choice(pieces) for _ in range(n)))
    return fixed + generated


def main():
    try:
        import ftfy  # noqa: F401
        sys.exit("ftfy is installed: the reference is defined without it (see the docstring); uninstall it first")
    except ImportError:
        pass
    n_vocab, n_merges = write_vocabulary()
    tokenizer = CLIPTokenizer(str(OUT / "vocab.json"), str(OUT / "merges.txt"))
    cases = []
    for p in prompts():
        ids = tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids
        count = len(tokenizer(p).input_ids)
        cases.append({"prompt": p, "ids": ids, "token_count": count})
    fixture = {"transformers": transformers.__version__, "tokenizer": "CLIPTokenizer (slow), without ftfy", "vocabulary": OPEN_CLIP,
               "max_length": 77, "cases": cases}
    (OUT / "prompts.json").write_text(json.dumps(fixture, ensure_ascii=False, indent=0), encoding="utf-8")
    print(f"vocabulary {n_vocab} entries, {n_merges} merges; {len(cases)} prompts, "
          f"{sum(c['token_count'] > 77 for c in cases)} over 77 tokens")


if __name__ == "__main__":
    main()
