"""Regenerate the bundled Fashion-MNIST subset from the official IDX files (SPEC DATA, issue 5).

    python -m refimpl.data.make_bundled            # rewrite bundled/fashion_mnist_subset.npz
    python -m refimpl.data.make_bundled --check    # exit 1 unless the committed file is reproduced

The source is Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``) or
``--root DIR`` with the four official IDX files; their checksums are verified before use. The
output bytes depend only on those files and on zlib (see :func:`refimpl.data.bundled.npz_bytes`).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from .bundled import BUNDLED_NPZ, CONTENT_SHA256, content_sha256, npz_bytes, subset_arrays
from .mnist import load_fashion_mnist

__all__ = ["regenerate", "main"]


def regenerate(root=None) -> tuple[bytes, str]:
    """(npz bytes, content sha256) of the subset built from the official files in ``root``."""
    full = load_fashion_mnist(root, verify=True)
    if not full.verified:
        raise ValueError(f"make_bundled: the files in {full.source} are not the official "
                         f"Fashion-MNIST release (checksums differ); the bundled subset is "
                         f"defined on the official files only")
    arrays = subset_arrays(full)
    return npz_bytes(arrays), content_sha256(arrays)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refimpl.data.make_bundled", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="directory with the four Fashion-MNIST IDX files "
                                   "(default: Debian's /usr/share/datasets/fashion-mnist)")
    ap.add_argument("--out", type=Path, default=BUNDLED_NPZ, help="output .npz path")
    ap.add_argument("--check", action="store_true",
                    help="compare with --out instead of writing it; exit 1 on any difference")
    args = ap.parse_args(argv)
    data, content = regenerate(args.root)
    sha = hashlib.sha256(data).hexdigest()
    print(f"subset: {len(data):,} bytes, file sha256 {sha}, content sha256 {content}")
    if content != CONTENT_SHA256:
        print(f"note: content sha256 differs from refimpl.data.bundled.CONTENT_SHA256 "
              f"({CONTENT_SHA256}); update it if the subset rule changed on purpose")
    if args.check:
        old = args.out.read_bytes() if args.out.is_file() else b""
        same = old == data
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'} "
              f"(committed sha256 {hashlib.sha256(old).hexdigest()})")
        return 0 if same and content == CONTENT_SHA256 else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
