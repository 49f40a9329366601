"""Compare the metrics of a fresh `dvc repro` with the committed ones.

Loss-like values must agree within 1 % (relative). CPU runs are bitwise reproducible on the same
kind of CPU at the same thread count, so on this machine kind the difference is 0; the tolerance
allows another CPU (other SIMD kernels sum in another order, and 90 training steps amplify it).
Speeds and wall times depend on the machine and its load, so they are reported, not compared.
"""

import json
import subprocess
import sys

FILES = ("metrics/train.json", "metrics/eval.json")
COMPARED = ("train_loss", "val_loss", "train_perplexity", "val_perplexity", "steps", "tokens_seen", "parameters")
RELATIVE_TOLERANCE = 0.01


def main() -> int:
    failures = 0
    for path in FILES:
        committed = json.loads(subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True,
                                              check=True).stdout)
        fresh = json.loads(open(path).read())
        for key in COMPARED:
            if key not in committed:
                continue
            old, new = committed[key], fresh[key]
            ok = abs(new - old) <= RELATIVE_TOLERANCE * abs(old)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {path} {key}: committed {old:.6g}, reproduced {new:.6g}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
