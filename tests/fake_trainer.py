"""A stand-in for `python -m trainers.multitask` under trainers.launch: no TensorFlow, so a
cluster of them starts in a fraction of a second.

It prints its TF_CONFIG, records it (and its pid) in --out_dir, then plays its role:
ps tasks and ParameterServerStrategy workers serve forever; the chief and MWMS workers
print `step i` lines (until --steps or --until_file) and exit with --exit_code
(--fail_task exits early with --fail_code).
"""

import argparse
import json
import os
import signal
import sys
import time


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step_seconds", type=float, default=0.02)
    parser.add_argument("--exit_code", type=int, default=0)
    parser.add_argument("--fail_task", default=None, help="type:index that fails")
    parser.add_argument("--fail_step", type=int, default=1)
    parser.add_argument("--fail_code", type=int, default=3)
    parser.add_argument("--out_dir", default=None)
    parser.add_argument("--until_file", default=None, help="stop stepping once it exists")
    parser.add_argument("--progress", action="store_true", help="a \\r progress bar")
    parser.add_argument("--stderr", action="store_true", help="also a line on stderr")
    parser.add_argument("--ignore_sigterm", default="",
                        help="comma-separated task types that ignore SIGTERM")
    return parser.parse_args(argv)


def main(argv):
    args = parse(argv)
    config = json.loads(os.environ["TF_CONFIG"])
    task_type, index = config["task"]["type"], config["task"]["index"]
    name = f"{task_type}:{index}"
    if task_type in args.ignore_sigterm.split(","):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_sigterm(signum, frame):
            print("got SIGTERM", flush=True)
            if args.out_dir:
                open(os.path.join(args.out_dir, f"sigterm-{task_type}-{index}-{os.getpid()}"),
                     "w").close()
            os._exit(143)
        signal.signal(signal.SIGTERM, on_sigterm)

    print("TF_CONFIG " + json.dumps(config, sort_keys=True))
    if args.out_dir:
        path = os.path.join(args.out_dir, f"{task_type}-{index}-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"tf_config": config, "pid": os.getpid(), "argv": argv,
                       "unbuffered": os.environ.get("PYTHONUNBUFFERED")}, f)
        os.replace(path + ".tmp", path)
    if args.stderr:
        print(f"to stderr from {name}", file=sys.stderr)

    serves = task_type == "ps" or (task_type == "worker" and "ps" in config["cluster"])
    if serves:
        print("serving")
        while True:
            time.sleep(3600)

    if args.progress:
        sys.stdout.write("".join(f"\rprogress {i}/3" for i in range(1, 4)) + "\n")
    for step in range(1, args.steps + 1):
        print(f"step {step}")
        if name == args.fail_task and step >= args.fail_step:
            print(f"failing with code {args.fail_code}")
            return args.fail_code
        if args.until_file and os.path.exists(args.until_file):
            break
        time.sleep(args.step_seconds)
    print("done")
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
