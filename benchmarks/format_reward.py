"""FormatReward's default pattern against the earlier one on adversarial completions, each side in a fresh process.

    python benchmarks/format_reward.py            # --kb 256 --repeats 3

For each input (256 kB of a repeated unit that makes ``.*?</think>\\s*<answer>`` rescan the rest after every
``</think>``), a child process compiles one pattern and times ``re.search`` on it; the parent prints the best of
``--repeats`` runs of each side and their ratio (earlier / default).
"""

import argparse
import json
import subprocess
import sys

from lit_rl.rewards.format import R1_FORMAT

EARLIER = r"^<think>.*?</think>\s*<answer>.*?</answer>$"               # the default before R1_FORMAT
UNITS = ["<think></think><answer>", "<think></think><answer></answer>x", "</think>", "</answer>x"]
CHILD = """
import json, re, sys, time
pattern, unit, size = json.loads(sys.argv[1])
text = ("<think>" if unit.startswith("</") else "") + unit * (size // len(unit))
regex = re.compile(pattern, re.DOTALL)
start = time.perf_counter()
regex.search(text)
print(time.perf_counter() - start)
"""


def seconds(pattern: str, unit: str, size: int, repeats: int) -> float:
    runs = [float(subprocess.run([sys.executable, "-c", CHILD, json.dumps([pattern, unit, size])], check=True,
                                 capture_output=True, text=True).stdout) for _ in range(repeats)]
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'input':<36} {'earlier s':>10} {'default s':>10} {'ratio':>8}")
    for unit in UNITS:
        earlier = seconds(EARLIER, unit, args.kb * 1000, args.repeats)
        default = seconds(R1_FORMAT, unit, args.kb * 1000, args.repeats)
        print(f"{unit!r:<36} {earlier:>10.3f} {default:>10.4f} {earlier / default:>8.0f}")


if __name__ == "__main__":
    main()
