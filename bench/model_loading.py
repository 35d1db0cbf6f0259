"""Time to the first scored batch, cold (weights downloaded) and warm (cache), and time to fail on a dead hub.

    python bench/model_loading.py                       # the bundled model (9.4 MB) from a loopback hub
    python bench/model_loading.py --model vit-b-32      # random ViT-B-32 weights in fp16 (~300 MB) from the hub

Every figure is one ``paircurate run --clip`` process, started the way a user
starts it, with ``HF_ENDPOINT`` pointing at a FakeHub on 127.0.0.1 and its own
``HF_HOME``: "cold" starts with an empty cache, "warm" reuses it, "dead hub"
has nothing listening on the endpoint, "silent hub" accepts connections and
never answers (huggingface_hub alone would retry for ~23 s per file there).
Two baselines separate start-up from network: "bundled weights" (no hub at
all) and "unknown model name" (fails on the driver before any request).
Seconds are from process start to the log line of the first scored batch (or
to exit for the failures); median of ``--repeats``. Loopback is far faster
than a real hub, so "cold" here is the fixed cost plus a fast transfer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MARKER = "CLIP: first batch scored"


def _repo_files(model: str) -> tuple[str, dict[str, bytes], str]:
    from paircurate.embeddings.clip import TINY_MODEL
    from paircurate.testing.hub import tiny_model_repo_files

    if model == "tiny":
        return "paircurate/tiny-hub", tiny_model_repo_files(), TINY_MODEL
    import open_clip
    import torch
    from safetensors.torch import save

    torch.manual_seed(0)
    net = open_clip.create_model("ViT-B-32")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    config = {"model_cfg": open_clip.get_model_config("ViT-B-32"),
              "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}
    return "bench/vit-b-32-random", {"open_clip_config.json": json.dumps(config).encode(),
                                     "open_clip_model.safetensors": save(state)}, "ViT-B-32"


def _inputs(server, folder: str, n: int) -> str:
    from paircurate.testing import synthetic

    rows = []
    for i, sample in enumerate(synthetic.make_samples(n, seed=5, size=128)):
        buf = io.BytesIO()
        sample.image.save(buf, format="JPEG", quality=90)
        rows.append({"url": server.url(server.add(f"/b/{i}.jpg", buf.getvalue(), content_type="image/jpeg")),
                     "caption": sample.caption})
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _run(inputs: str, out: str, repo: str, model: str, env: dict, pretrained: str | None = None) -> tuple[float, int, str]:
    argv = [sys.executable, "-m", "paircurate.cli", "run", inputs, "-o", out, "--overwrite", "-v", "--no-progress",
            "--no-report", "--allow-private-network", "--clip-model", model, "--clip-pretrained", pretrained or f"hf-hub:{repo}",
            "--clip-threshold", "-1", "--device", "cpu", "--clip-batch-size", "32", "--no-dedup-semantic"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first, tail = None, []
    for line in proc.stderr:
        tail = (tail + [line.rstrip()])[-3:]
        if first is None and MARKER in line:
            first = time.monotonic() - started
    rc = proc.wait()
    return (first if first is not None else time.monotonic() - started), rc, tail[-1] if tail else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "vit-b-32"), default="tiny")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from paircurate.testing.loopback import LoopbackServer
    from paircurate.testing.hub import FakeHub

    repo, files, model = _repo_files(args.model)
    size_mb = sum(len(v) for v in files.values()) / 1e6
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    results: dict[str, list[float]] = {"bundled weights (baseline, no hub)": [], "cold (download)": [], "warm (cache)": [],
                                       "unknown model name (baseline, no request)": [], "dead hub, no cache": [],
                                       "silent hub, no cache": []}
    notes = {}
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as images:
        inputs = _inputs(images, tmp, args.pairs)
        for r in range(args.repeats):
            from paircurate.embeddings.clip import TINY_MODEL

            seconds, rc, last = _run(inputs, os.path.join(tmp, "out"), repo, TINY_MODEL, dict(base_env), TINY_MODEL)
            assert rc == 0, last
            results["bundled weights (baseline, no hub)"].append(seconds)
            seconds, rc, last = _run(inputs, os.path.join(tmp, "out"), repo, "ViT-Nope-99", dict(base_env), "x")
            assert rc != 0
            results["unknown model name (baseline, no request)"].append(seconds)
            home = os.path.join(tmp, f"hf-{r}")
            with FakeHub(repo, files) as hub:
                env = dict(base_env, HF_HOME=home, HF_ENDPOINT=hub.endpoint)
                for label in ("cold (download)", "warm (cache)"):
                    seconds, rc, last = _run(inputs, os.path.join(tmp, "out"), repo, model, env)
                    assert rc == 0, last
                    results[label].append(seconds)
            dead_env = dict(base_env, HF_HOME=os.path.join(tmp, f"hf-dead-{r}"), HF_ENDPOINT=hub.endpoint)
            seconds, rc, last = _run(inputs, os.path.join(tmp, "out"), repo, model, dead_env)
            assert rc != 0
            results["dead hub, no cache"].append(seconds)
            notes["dead hub, no cache"] = last

            silent = socket.socket()
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            held = []
            threading.Thread(target=lambda: [held.append(silent.accept()) for _ in iter(int, 1)], daemon=True).start()
            silent_env = dict(base_env, HF_HOME=os.path.join(tmp, f"hf-silent-{r}"),
                              HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}")
            seconds, rc, last = _run(inputs, os.path.join(tmp, "out"), repo, model, silent_env)
            silent.close()
            assert rc != 0
            results["silent hub, no cache"].append(seconds)
            notes["silent hub, no cache"] = last

    # The resolution step alone, in this process: what the network adds, without start-up and scoring.
    from paircurate.embeddings.clip import resolve_weights

    resolve: dict[str, list[float]] = {"resolve_weights, cold (probe + download)": [], "resolve_weights, warm (cache)": []}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache, FakeHub(repo, files) as hub:
            os.environ["HF_ENDPOINT"] = hub.endpoint
            for label in resolve:
                start = time.monotonic()
                resolve_weights(model, f"hf-hub:{repo}", cache_dir=cache)
                resolve[label].append(time.monotonic() - start)
    results.update(resolve)

    print(f"model: {model} via hf-hub:{repo} ({size_mb:.1f} MB), {args.pairs} pairs, repeats {args.repeats}, CPU\n")
    print("| case | seconds to first scored batch (or to exit) | runs |")
    print("|---|---|---|")
    for label, values in results.items():
        print(f"| {label} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    for label, line in notes.items():
        print(f"\n{label}: {line}")


if __name__ == "__main__":
    main()
