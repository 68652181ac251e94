#!/usr/bin/env python3
"""CLIP tokenizer vocabulary and reference token ids.

1. The vocabulary: open_clip's PyPI wheel ships OpenAI's original BPE file (bpe_simple_vocab_16e6.txt.gz, MIT
   licence, see tests/data/clip_tokenizer/LICENSE). vocab.json and merges.txt follow from it exactly as CLIP defines
   them: the 256 byte symbols, the same with "</w>", the 48,894 merges joined, then <|startoftext|>, <|endoftext|>
   (49,408 entries).
2. prompts.json: 967 prompts with transformers' CLIPTokenizer ids (padding="max_length", max_length=77,
   truncation=True; the trailing pad ids written as a count) and the untruncated token count, one case per line:
   - 330 ordinary ones (Unicode letters and accents, emoji, digits, punctuation runs, contractions, extra whitespace,
     HTML entities, the empty prompt, prompts over 77 tokens);
   - 437 edge cases: the special tokens typed in the text (after every ASCII punctuation mark, after letters, digits
     and non-ASCII letters, at the start and end, repeated, partial, in upper case, brought together by cleaning);
     unassigned, private-use, noncharacter, format and control code points, and characters assigned after the
     Unicode version of Python's unicodedata (which the cleaning drops); whitespace of every kind; combining marks;
     emoji with ZWJ, skin tones, flags and tags; CJK; right-to-left scripts; the two places where the regex's
     IGNORECASE shows on lower-case text (U+017F, U+0345);
   - 200 random mixtures of all of these and random code points (fixed seed);
   and, under "pad_token_cases", 40 prompts for a tokenizer whose pad token is "!" (SD 2.x), which transformers
   splits out of the text as a special token, too.
   The fixture records the Python and unicodedata versions: the cleaning's categories come from unicodedata, so run
   this with Python 3.11 (Unicode 14.0, the tokenizer's kUnicodeVersion; test_clip_tokenizer checks that they agree).

transformers' slow CLIPTokenizer cleans text with ftfy when it is installed and with its BasicTokenizer otherwise;
the reference is made WITHOUT ftfy (it is neither a transformers nor a diffusers dependency), and the script
refuses to run if ftfy is importable.
"""
import gzip
import json
import pathlib
import platform
import random
import string
import subprocess
import sys
import tempfile
import unicodedata
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
    pieces = PIECES
    generated = []
    while len(fixed) + len(generated) < 330:
        n = rng.randint(1, 40 if rng.random() < 0.9 else 120)
        sep = rng.choice([" ", " ", " ", "", "  ", ", "])
        generated.append(sep.join(rng.choice(pieces) for _ in range(n)))
    return fixed + generated + edge_prompts() + random_prompts(pieces, 200)


PIECES = ["dog", "cat", "sks", "photo", "painting", "of", "a", "the", "in", "Paris", "MOUNTAIN", "Snow", "café", "naïve",
              "Zürich", "東京", "🐶", "🎨", "👍🏽", "123", "4k", "8K", "3.5", "!!", "?!", "...", ",", ";", ":", "--", "(", ")", "[", "]",
              "it's", "dog's", "we're", "they've", "I'm", "you'll", "she'd", "don't", "&amp;", "'", '"', "  ", "\t", "\n",
              "Ωμέγα", "Ёлка", "über", "ﬁne", "ß", "İ", "x̃", "½", "Ⅳ", "٣"]


def cp(*code_points):
    return "".join(chr(c) for c in code_points)


def edge_prompts():
    eot, sot = "<|endoftext|>", "<|startoftext|>"
    out = []
    for p in string.punctuation:  # special tokens right after (and before) every ASCII punctuation mark
        out += [f"photo{p}{eot}dog", f"a{p}{sot}", f"{p}{eot}{p}"]
    out += [f"a{eot}", f"dog{sot}cat", f"7{eot}8", f"4k{eot}", f"é{eot}", f"東{eot}京", f"🐶{eot}", f"я{sot}б", f"ß{eot}ß",
            f"café{sot}crème", f"٣{eot}٤", f"½{eot}", f"'s{eot}'t", f"it's{eot}", f"{eot}'s", f"{eot}{eot}", f"{sot}{eot}{sot}",
            f"{eot} " * 40, f" {eot} ", f"\t{eot}\n", f"{sot}", f"{sot}a photo of sks dog{eot}", f"a photo, {eot}, {sot}.",
            "<|endoftext|", "|endoftext|>", "<|endoftext", "<|end of text|>", "<|ENDOFTEXT|>", "<|EndOfText|>", "<|STARTOFTEXT|>x",
            f"<|startoftext{eot}", f"<{eot}>", f"<|{eot}|>", f"{eot}>", f"<<|endoftext|>>", "<||endoftext||>", "<|endoftext|>!!",
            "<|endo\u200bftext|>", ",<|endo\u200bftext|>", "<|endo\u0000ftext|>", "<|endo ftext|>", "<|endoftext|>\u0301",
            "<|ſtartoftext|>", ",<|ſtartoftext|>", "'ſ", "it'ſ", "'ſt", "x\u0345y", "!\u0345!", "ᾳ", "α\u0345", "\u0345", "a\u0345\u0301b"]
    # unassigned, private use, noncharacters; characters assigned after the reference's Unicode version
    weird = [0x378, 0x379, 0x380, 0x9FFF, 0xE000, 0xF8FF, 0xF0000, 0xFFFFD, 0x100000, 0x10FFFD, 0x10FFFF, 0xFDD0, 0xFDEF,
             0xFFFE, 0xFFFF, 0x1FFFE, 0x2FFFF, 0xE0000, 0x1FA77, 0x1FAE8, 0x1F6DC, 0x31350, 0x11F00, 0x1E4D0, 0x2B739, 0x2B73F]
    for c in weird:
        out += [cp(c), f"a{cp(c)}b", f"dog {cp(c)} cat", f"!{cp(c)}!", f"{cp(c)}{eot}"]
    # format characters (Cf), controls (Cc), whitespace of every kind
    for c in [0xAD, 0x600, 0x61C, 0x6DD, 0x70F, 0x180E, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x202A, 0x202E, 0x2060, 0x2064,
              0x2066, 0x2069, 0xFEFF, 0xFFF9, 0xFFFB, 0x110BD, 0x1D173, 0xE0001, 0xE0020, 0xE007F]:
        out += [f"a{cp(c)}b", f"{cp(c)}dog"]
    for c in [0x1, 0x7, 0x8, 0x9, 0xA, 0xB, 0xC, 0xD, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x7F, 0x80, 0x85, 0x9F]:
        out += [f"a{cp(c)}b", f"dog{cp(c)}{cp(c)}cat {cp(c)}"]
    for c in [0xA0, 0x1680, 0x2000, 0x2005, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]:
        out += [f"a{cp(c)}b", f"{cp(c)}dog{cp(c)}"]
    out += ["\ufeffbom", "a\r\nb", "\x00\x00", "\x00", "\t\n\r", "\u0085", "\u2028\u2029", "a\u00ad\u00adb", "\ufffd", "a\ufffdb"]
    # combining marks, emoji sequences, CJK, right-to-left scripts, case
    out += ["e\u0301", "a\u0300\u0316", "\u0301alone", "n\u0303o", "\u1100\u1161\u11a8", "Z̸̧̛͚̑a̴l̶g̵o̷", "1\u20e3 #\ufe0f\u20e3",
            "👨‍👩‍👧‍👦 family", "🧑🏽‍💻", "❤️‍🔥", "🏳️‍⚧️", "👋🏿👋🏻", "🇯🇵🇫🇷", "🏴󠁧󠁢󠁥󠁮󠁧󠁿", "☺\ufe0e☺\ufe0f", "a\U000e0100b",
            "𠀀𪜀 ext", "豈 compat", "ｶﾀｶﾅ halfwidth", "。、「引用」", "中文，标点！", "ひらがな カタカナ", "한\u200d국",
            "مُحَمَّد", "العربية\u200ftext", "שָׁלוֹם", "hello שלום world", "ܐܪܡܝܐ", "ދިވެހި", "\u202bRTL\u202c",
            "İSTANBUL", "ẞ", "ΣΑΣ ΟΔΟΣ", "ǅ", "Ⓐⓑ", "ⅫⅣ", "K kelvin", "Å angstrom", "ﬃ ﬅ ﬆ", "ŉ", "ǰ", "ΐ", "ᾼ", "𝐀𝐁𝐂"]
    return out


def random_prompts(pieces, n):
    rng = random.Random(4321)
    pool = pieces + ["<|endoftext|>", "<|startoftext|>", "<|endoftext|", ",", ".", "!", "'s", "'ſ", "\u0345", "\u200d", "\ufeff", "\t",
                     "\x85", "\x0b", "\u3000", "\u2028", "\ue000", "\u0378", "\U0010ffff", "🩷", "e\u0301", "👨‍👩‍👧", "שלום",
                     "مرحبا", "東京", "İ"]

    def random_char():
        while True:
            c = rng.choice([rng.randrange(0x20, 0x250), rng.randrange(0x250, 0x3000), rng.randrange(0x3000, 0x10000),
                            rng.randrange(0x10000, 0x110000)])
            if not 0xD800 <= c <= 0xDFFF:
                return chr(c)
    out = []
    for _ in range(n):
        parts = [rng.choice(pool) if rng.random() < 0.7 else random_char() for _ in range(rng.randint(1, 30))]
        out.append(rng.choice(["", " ", " ", ", "]).join(parts))
    return out


def pad_bang_prompts():
    return ["!", "!!", "!!!", "wow!!", "a!b", "hello! world!", "<|endoftext|>!", "!<|startoftext|>!", "!<|endoftext|", "(!)", "!?!",
            "a photo of sks dog!", "!\u200b!", "!\ue000!", "! ! !", "it's!", "!'s", "x" * 5 + "!" * 80, "wow!! " * 30, ""] + \
        random_prompts(["dog", "!", "!!", "a", "'s", "🐶", "é", "?!", "<|endoftext|>"], 20)


def write_fixture(path, fixture):
    """JSON with one case per line: small, and a diff shows which prompts changed."""
    def render(value):
        if isinstance(value, dict):
            return "{\n" + ",\n".join(f"{json.dumps(k)}: {render(v)}" for k, v in value.items()) + "\n}"
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return "[\n" + ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in value) + "\n]"
        return json.dumps(value, ensure_ascii=False)
    path.write_text(render(fixture) + "\n", encoding="utf-8")


def reference_cases(tokenizer, texts):
    cases = []
    for p in texts:
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in p), "UTF-8 cannot carry a lone surrogate"
        ids = tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids
        count = len(tokenizer(p).input_ids)
        # the padding is written as a count (the file stays small); the test appends that many pad ids again
        unpadded = tokenizer(p, max_length=77, truncation=True).input_ids
        assert ids == unpadded + [tokenizer.pad_token_id] * (77 - len(unpadded)), p
        cases.append({"prompt": p, "ids": unpadded, "padding": 77 - len(unpadded), "token_count": count})
    return cases


def main():
    try:
        import ftfy  # noqa: F401
        sys.exit("ftfy is installed: the reference is defined without it (see the docstring); uninstall it first")
    except ImportError:
        pass
    n_vocab, n_merges = write_vocabulary()
    tokenizer = CLIPTokenizer(str(OUT / "vocab.json"), str(OUT / "merges.txt"))
    cases = reference_cases(tokenizer, prompts())
    bang = CLIPTokenizer(str(OUT / "vocab.json"), str(OUT / "merges.txt"), pad_token="!")
    fixture = {"transformers": transformers.__version__, "python": platform.python_version(), "unicodedata": unicodedata.unidata_version,
               "tokenizer": "CLIPTokenizer (slow), without ftfy", "vocabulary": OPEN_CLIP, "max_length": 77, "cases": cases,
               "pad_token_cases": {"pad_token": "!", "cases": reference_cases(bang, pad_bang_prompts())}}
    write_fixture(OUT / "prompts.json", fixture)
    print(f"vocabulary {n_vocab} entries, {n_merges} merges; {len(cases)} prompts, "
          f"{sum(c['token_count'] > 77 for c in cases)} over 77 tokens; {len(fixture['pad_token_cases']['cases'])} with pad \"!\"; "
          f"Python {platform.python_version()}, unicodedata {unicodedata.unidata_version}")


if __name__ == "__main__":
    main()
