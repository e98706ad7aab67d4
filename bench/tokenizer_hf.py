#!/usr/bin/env python3
"""Hugging Face `tokenizers` (Rust) on the tokenizer benchmark corpus, and parity with pdserve.

The corpus and the parity file are written by bench/tokenizer_bench (C++), so every tokenizer
sees the same bytes:

    build-tok/bench/tokenizer_bench --write-corpus build-tok/tokenizer_corpus.json \
        --write-parity build-tok/tokenizer_parity.json && gzip -kf build-tok/tokenizer_corpus.json
    python3 bench/tokenizer_hf.py --tokenizer models/deepseek-v3/tokenizer.json \
        --corpus build-tok/tokenizer_corpus.json.gz --parity build-tok/tokenizer_parity.json

Prints MB/s and tokens/s for Tokenizer.encode one document at a time (one thread) and for
encode_batch (all cores), the CPU, and the number of parity strings whose ids differ from
pdserve's (the parity file holds pdserve's ids, including strings the npm peer cannot judge).
"""
import argparse
import gzip
import json
import os
import platform
import time


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_json(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json")
    ap.add_argument("--corpus", required=True, help="JSON list of documents (.json or .json.gz)")
    ap.add_argument("--parity", help="JSON {texts, ids} written by tokenizer_bench --write-parity")
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    print(f"tokenizers {tokenizers.__version__}, machine: {cpu_name()}, {os.cpu_count()} hardware threads")

    if args.parity:
        p = load_json(args.parity)
        bad = 0
        for i, (text, ours) in enumerate(zip(p["texts"], p["ids"])):
            theirs = tok.encode(text, add_special_tokens=False).ids
            if theirs != ours:
                bad += 1
                if bad <= 10:
                    k = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                    print(f"  parity: string {i} {text[:40]!r}: ids differ at {k}")
            elif tok.decode(theirs, skip_special_tokens=False) != text:
                print(f"  parity: string {i} does not round-trip through HF decode")
        print(f"parity: {len(p['texts']) - bad} of {len(p['texts'])} strings have identical ids ({bad} differ)")

    docs = load_json(args.corpus)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    tok.encode(docs[0], add_special_tokens=False)  # warm up
    t0 = time.perf_counter()
    ntok = sum(len(tok.encode(d, add_special_tokens=False).ids) for d in docs)
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    ntok_batch = sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False))
    batch = time.perf_counter() - t0
    mb = nbytes / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.1f} MB, {ntok} tokens")
    print(f"{'encoder':<44} {'seconds':>9} {'MB/s':>9} {'Mtokens/s':>10}")
    print(f"{'HF tokenizers encode, 1 thread':<44} {single:9.2f} {mb / single:9.2f} {ntok / single / 1e6:10.3f}")
    print(f"{'HF tokenizers encode_batch, all threads':<44} {batch:9.2f} {mb / batch:9.2f} {ntok_batch / batch / 1e6:10.3f}")


if __name__ == "__main__":
    main()
