"""Main job of the README (interim): build a model, stream a long input into memory, save and reload it."""

import argparse
import time

import torch

from rm_hf import RehearsalMemoryConfig, RehearsalMemoryModel


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--length", type=int, default=20_000)
    args = parser.parse_args()

    model = RehearsalMemoryModel(RehearsalMemoryConfig()).eval()
    ids = torch.randint(0, model.config.encoder_config.vocab_size, (1, args.length))
    start = time.perf_counter()
    with torch.no_grad():
        memory = model.init_memory(1)
        for chunk in ids.split(1024, dim=1):
            memory = model.write(memory, chunk)
    seconds = time.perf_counter() - start
    print(f"wrote {args.length} tokens in {seconds:.2f} s ({args.length / seconds:,.0f} tokens/s); memory {tuple(memory.shape)}")
    model.save_pretrained(args.output_dir)
    reloaded = RehearsalMemoryModel.from_pretrained(args.output_dir).eval()
    with torch.no_grad():
        same = torch.allclose(reloaded(ids[:, :512]).memory, model(ids[:, :512]).memory)
    print(f"saved to {args.output_dir}; reloaded model gives the same memory: {same}")


if __name__ == "__main__":
    main()
