"""The math-verify worker of :class:`lit_rl.MathReward`, run as a script (``python -I math_worker.py``) so that it
imports math-verify and nothing of lit-rl: JSON lines ``[gold, completion]`` in, ``true``/``false`` (correct) or
``null`` (gold unparsable) out, after a first ``"ready"``; ``[gold, null]`` parses the gold alone (``true``)."""

import json
import logging
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)                    # Ctrl-C is the parent's to handle
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)        # its "timeout disabled" warning: the parent enforces one
    golds: dict[str, list] = {}                                     # a prompt's samples share their gold
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        gold, completion = json.loads(line)
        if gold not in golds:
            if len(golds) > 4096:
                golds.clear()
            golds[gold] = parse(gold, parsing_timeout=None)
        if not golds[gold] or completion is None:                   # unparsable, or only the gold was asked
            print("null" if not golds[gold] else "true", flush=True)
            continue
        try:
            correct = bool(verify(golds[gold], parse(completion, parsing_timeout=None), timeout_seconds=None))
        except Exception:                                           # math-verify swallows its own; be sure
            correct = False
        print(json.dumps(correct), flush=True)


if __name__ == "__main__":
    main()
