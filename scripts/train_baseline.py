"""Train the demo's aligned baseline: a DPO LoRA adapter of SmolLM2-135M-Instruct towards an offline reward.

Preference pairs come from the model itself: for each training prompt, ``--samples`` responses are sampled
(temperature 1), scored by the reward, and the best and worst form a (chosen, rejected) pair when their rewards
differ by at least ``--min-gap``. Training is DPO (``trl.DPOTrainer``) on a LoRA adapter (``peft``), the frozen
base serving as the reference model. The adapter, the pairs and a summary (settings, seed, losses, held-out
reward of SFT vs baseline) are written to ``--out``.

Never run by CI. Reproduce the committed adapter with (about 20 minutes on 2 CPU cores)::

    make models && .venv/bin/pip install -e '.[train]'
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_baseline.py --n-prompts 256
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def sample_pairs(lm, reward, prompts, samples, max_new_tokens, min_gap, seed, batch_prompts=8):
    from tqdm.auto import tqdm

    from tqstar.randomness import prompt_key, stream_seed

    pairs, gaps = [], []
    for start in tqdm(range(0, len(prompts), batch_prompts), desc="sampling pairs"):
        batch = prompts[start:start + batch_prompts]
        prefixes = [lm.encode_prompt(p) for p in batch for _ in range(samples)]
        seeds = [stream_seed(seed, prompt_key(p), "bon", 0, -1, i) for p in batch for i in range(samples)]
        out = lm.rollout(prefixes, max_new_tokens, temperature=1.0, seeds=seeds)
        texts = [lm.decode(t) for t in out.tokens]
        values = reward.score([p for p in batch for _ in range(samples)], texts)
        for i, prompt in enumerate(batch):
            group = list(zip(values[i * samples:(i + 1) * samples], texts[i * samples:(i + 1) * samples]))
            best, worst = max(group), min(group)
            if best[0] - worst[0] >= min_gap and best[1] != worst[1]:
                pairs.append({"prompt": [{"role": "user", "content": prompt}],
                              "chosen": [{"role": "assistant", "content": best[1]}],
                              "rejected": [{"role": "assistant", "content": worst[1]}],
                              "reward_chosen": best[0], "reward_rejected": worst[0]})
                gaps.append(best[0] - worst[0])
    return pairs, gaps


def greedy_reward(lm, reward, prompts, max_new_tokens):
    from tqstar import DecodeParams, Engine

    engine = Engine(lm, reward=reward)
    responses = engine.generate(prompts, DecodeParams(method="sft", max_new_tokens=max_new_tokens), progress=False)
    return [r.reward for r in responses]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", default="sentiment", help="tqstar reward spec the baseline is aligned to")
    parser.add_argument("--train-prompts", nargs="+", default=["dna:train", "rtp:train"])
    parser.add_argument("--n-prompts", type=int, default=384, help="training prompts drawn from those sets")
    parser.add_argument("--eval-prompts", nargs="+", default=["dna:test", "rtp:test"])
    parser.add_argument("--n-eval", type=int, default=32, help="held-out prompts per eval set")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--min-gap", type=float, default=0.2)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta (use it as tq-indirect's beta)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", help="reuse preference pairs written by an earlier run (pairs.jsonl)")
    parser.add_argument("--out", default="src/tqstar/builtin/adapters/smollm2-sentiment-dpo")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from tqstar import TransformersLM, load_reward
    from tqstar.builtin.models import smollm2_dir
    from tqstar.prompts import load_prompts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    reward = load_reward(args.reward)
    sft = TransformersLM.from_pretrained(smollm2_dir(), name="smollm2")

    pool = [p for source in args.train_prompts for p in load_prompts(source)]
    random.Random(args.seed).shuffle(pool)
    prompts = pool[: args.n_prompts]
    if args.pairs:
        pairs = [json.loads(line) for line in Path(args.pairs).read_text().splitlines() if line.strip()]
        gaps = [p["reward_chosen"] - p["reward_rejected"] for p in pairs]
    else:
        pairs, gaps = sample_pairs(sft, reward, prompts, args.samples, args.max_new_tokens, args.min_gap, args.seed)
    with (out / "pairs.jsonl").open("w") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair) + "\n")
    print(f"{len(pairs)} preference pairs from {len(prompts)} prompts (mean reward gap {sum(gaps) / max(1, len(gaps)):.3f})")

    config = DPOConfig(
        output_dir=str(out / "trainer"), beta=args.beta, learning_rate=args.lr, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, max_length=256,
        logging_steps=5, save_strategy="no", report_to=[], seed=args.seed, use_cpu=True, bf16=False,
        lr_scheduler_type="cosine", warmup_steps=5, gradient_checkpointing=False, precompute_ref_log_probs=True,
    )
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=sft.model, args=config, train_dataset=dataset, processing_class=sft.tokenizer,
                         peft_config=lora)
    trainer.train()
    trainer.model.save_pretrained(out)
    losses = [h for h in trainer.state.log_history if "loss" in h]

    base_model = trainer.model.merge_and_unload().eval()
    baseline = TransformersLM(base_model, sft.tokenizer, name="smollm2+dpo")
    fresh_sft = TransformersLM.from_pretrained(smollm2_dir(), name="smollm2")
    held_out = {}
    for source in args.eval_prompts:
        eval_prompts = load_prompts(source, limit=args.n_eval)
        a = greedy_reward(fresh_sft, reward, eval_prompts, args.max_new_tokens)
        b = greedy_reward(baseline, reward, eval_prompts, args.max_new_tokens)
        held_out[source] = {"sft": sum(a) / len(a), "baseline": sum(b) / len(b), "n": len(a),
                            "baseline_wins": sum(y > x for x, y in zip(a, b)), "ties": sum(y == x for x, y in zip(a, b))}
        print(f"held-out {source}: greedy {args.reward} reward SFT {held_out[source]['sft']:.3f} ->"
              f" baseline {held_out[source]['baseline']:.3f} ({len(a)} prompts)")
    summary = {"settings": vars(args), "pairs": len(pairs), "mean_gap": sum(gaps) / max(1, len(gaps)),
               "losses": losses, "held_out_greedy_reward": held_out, "minutes": (time.time() - started) / 60,
               "trl": __import__("trl").__version__, "peft": __import__("peft").__version__}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
