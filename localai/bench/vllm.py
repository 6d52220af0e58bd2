"""`--emit vllm`: the same comparison continued on vLLM, on one node or several.

Flags follow vLLM's own argument parsers: `vllm/engine/arg_utils.py` (parallel and cache
options), `vllm/entrypoints/cli/serve.py` (`--headless`), `vllm/benchmarks/serve.py` and
`vllm/benchmarks/datasets/arg_utils.py` (`vllm bench serve`, random dataset).
"""

from __future__ import annotations

import shlex

# quantization formats `vllm serve --quantization` accepts that localai can produce or load
VLLM_QUANTIZATION = {"none": None, "bitsandbytes": "bitsandbytes", "gguf": "gguf", "fp8": "fp8",
                     "awq": "awq", "gptq": "gptq", "compressed-tensors": "compressed-tensors"}
RPC_PORT = 13345


def _join(words: list) -> str:
    return shlex.join([str(w) for w in words])


def serve_commands(model: str, n: int, max_model_len: int, max_num_seqs: int, seed: int,
                   quantization: str | None) -> dict[str, list[str]]:
    """`vllm serve` lines: DP and TP on one node, DP over two nodes (mp and ray)."""
    common = ["--max-model-len", max_model_len, "--max-num-seqs", max_num_seqs, "--seed", seed]
    if quantization:
        common += ["--quantization", quantization]
    head = ["--data-parallel-address", "HEAD_NODE_IP", "--data-parallel-rpc-port", RPC_PORT]
    return {
        "dp": [_join(["vllm", "serve", model, "--data-parallel-size", n, *common])],
        "tp": [_join(["vllm", "serve", model, "--tensor-parallel-size", n, *common])],
        "dp_two_nodes": [
            _join(["vllm", "serve", model, "--data-parallel-size", 2 * n, "--data-parallel-size-local", n,
                   *head, *common]),
            _join(["vllm", "serve", model, "--headless", "--data-parallel-size", 2 * n,
                   "--data-parallel-size-local", n, "--data-parallel-start-rank", n, *head, *common]),
        ],
        "dp_ray": [_join(["vllm", "serve", model, "--data-parallel-size", 2 * n, "--data-parallel-backend", "ray",
                          *common])],
    }


def dataset_words(input_len: int, output_len: int, prompts_file: str | None) -> list:
    """vLLM's dataset for the same workload: random prompts of the same length, or the prompts file
    as its custom dataset (one JSON line with a "prompt" each, sent as raw text, in file order)."""
    if prompts_file is None:
        return ["--dataset-name", "random", "--random-input-len", input_len, "--random-output-len", output_len,
                "--random-range-ratio", 0]
    return ["--dataset-name", "custom", "--dataset-path", prompts_file, "--custom-output-len", output_len,
            "--skip-chat-template", "--disable-shuffle"]


def bench_command(model: str, dataset: list, num_prompts: int, concurrency: int, seed: int, result_file: str) -> str:
    """`vllm bench serve` with the same prompts (or lengths), request count and concurrency, EOS ignored."""
    return _join(["vllm", "bench", "serve", "--backend", "vllm", "--model", model, *dataset,
                  "--ignore-eos", "--num-prompts", num_prompts, "--seed", seed,
                  "--request-rate", "inf", "--max-concurrency", concurrency,
                  "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
                  "--save-result", "--result-filename", result_file])


def emit(model: str, quantization: str, n: int, input_len: int, output_len: int, num_prompts: int,
         batch_size: int, seed: int, num_heads: int | None = None, prompts_file: str | None = None) -> dict:
    """Everything `--emit vllm` prints, as data."""
    prompts_note = ("vLLM's random prompts use the same lengths and seed, not the same token ids."
                    if prompts_file is None else
                    f"vLLM's custom dataset reads {prompts_file} as JSON lines with a \"prompt\" field (convert a "
                    "plain-text prompts file first); with fewer lines than --num-prompts it samples extra ones at "
                    "random where localai cycles through the file.")
    notes = [prompts_note,
             "vLLM accepts --quantization fp8, awq, gptq, bitsandbytes, gguf, compressed-tensors and more; "
             "it has no TurboQuant format: serve the 16-bit model, or an NF4 (bitsandbytes) one."]
    vllm_quant = VLLM_QUANTIZATION.get(quantization)
    if quantization not in VLLM_QUANTIZATION:
        notes.insert(0, f"This model is {quantization}, which vLLM cannot load: the commands name the model as given; "
                        "point them at its 16-bit original.")
    if num_heads and num_heads % n:
        notes.append(f"vLLM needs the {num_heads} attention heads to divide by --tensor-parallel-size; {n} does not, "
                     "so its TP line fails for this model (localai shards by key/value group instead).")
    if quantization == "gguf":
        notes.append("vLLM loads a single-file GGUF with --tokenizer set to the original repo.")
    serve = serve_commands(model, n, input_len + output_len, batch_size, seed, vllm_quant)
    dataset = dataset_words(input_len, output_len, prompts_file)
    bench = {kind: bench_command(model, dataset, num_prompts, batch_size * (n if kind != "tp" else 1), seed,
                                 f"vllm-{kind}{n}.json")
             for kind in ("dp", "tp")}
    return {"model": model, "serve": serve, "bench": bench, "notes": notes}


def render_script(emitted: dict) -> str:
    """A shell script: start one server (pick a block), then run the matching bench line."""
    s, b = emitted["serve"], emitted["bench"]
    lines = [f"# {note}" for note in emitted["notes"]]
    lines += ["", "# one node, data parallel (one replica per GPU)", *s["dp"],
              "# one node, tensor parallel over the same GPUs", *s["tp"],
              "# two nodes, data parallel: first line on the head node, second on the other",
              *s["dp_two_nodes"],
              "# two nodes with Ray (run on the head of a Ray cluster)", *s["dp_ray"],
              "", "# the same workload against the running server (DP, then TP)", b["dp"], b["tp"]]
    return "\n".join(lines) + "\n"
