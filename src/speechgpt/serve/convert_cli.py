"""``speechgpt convert``: the released SpeechGPT-7B files -> one bundle folder for ``speechgpt chat``/``serve``."""

from __future__ import annotations

import contextlib
import enum
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID

from speechgpt.constants import RELEASED_NUM_UNITS
from speechgpt.serve._console import EXIT_INTERRUPTED, EXIT_USER_ERROR, fail, progress_bar, stderr

# What can go wrong because of what the user gave (missing, unreadable or mismatched files): one line, no traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)


class LinkMode(str, enum.Enum):
    copy = "copy"
    hardlink = "hardlink"
    symlink = "symlink"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def convert_command(
    lm: Annotated[
        Path,
        typer.Option(
            "--lm", help="Hugging Face LLaMA folder with the extended vocabulary (SpeechGPT-7B-cm).", show_default=False
        ),
    ],
    hubert: Annotated[
        Path, typer.Option("--hubert", help="fairseq mHuBERT checkpoint (mhubert_base_vp_en_es_fr_it3.pt).")
    ],
    kmeans: Annotated[Path, typer.Option("--kmeans", help="joblib k-means (mhubert_..._L11_km1000.bin).")],
    vocoder: Annotated[Path, typer.Option("--vocoder", help="fairseq unit HiFi-GAN checkpoint (g_00500000).")],
    vocoder_config: Annotated[Path, typer.Option("--vocoder-config", help="The vocoder's fairseq config.json.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle folder to write.", show_default=False)],
    lora: Annotated[
        Path | None,
        typer.Option("--lora", help="peft LoRA adapter folder (SpeechGPT-7B-com), shipped in the bundle."),
    ] = None,
    merge_lora: Annotated[
        bool, typer.Option("--merge-lora", help="Fold --lora into the LM weights (loads the LM once) instead.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing, non-empty output folder.")
    ] = False,
    num_units: Annotated[
        int,
        typer.Option("--num-units", help="Speech units every part must have (1000 in the release).", min=1),
    ] = RELEASED_NUM_UNITS,
    link: Annotated[
        LinkMode,
        typer.Option("--link", help="Put the LM's files in the bundle as a copy, hard links or symlinks."),
    ] = LinkMode.copy,
) -> None:
    """Check the released SpeechGPT files against each other and write them as one bundle.

    Before anything is written, every mismatch is listed at once: the speech tokens (`<0>`..`<999>`, `<sosp>`,
    `<eosp>`, `[Human]`, `[SpeechGPT]`, `<eoh>`, `<eos>`) must sit right after the base vocabulary in that order,
    the LM's tensors must fit its config and cover the tokenizer, the k-means, LM and vocoder must count the same
    units, and the LoRA adapter must fit the LM. The 7B weights are checked from file headers, never loaded
    (except with --merge-lora); the bundle is built in a temporary folder and renamed into place. A JSON summary
    goes to stdout, progress to stderr.

    Examples:

      `speechgpt convert --lm SpeechGPT-7B-cm --lora SpeechGPT-7B-com --hubert mhubert_base_vp_en_es_fr_it3.pt`
      `--kmeans mhubert_base_vp_en_es_fr_it3_L11_km1000.bin --vocoder g_00500000 --vocoder-config config.json`
      `-o speechgpt-7b`

      Add `--link hardlink` to share the 13 GB of LM weights with the source folder instead of copying them, or
      `--merge-lora` to fold the adapter into the LM. Then: `speechgpt chat --bundle speechgpt-7b`
    """
    import json

    from speechgpt.convert.released import CONVERSION_RECORD_NAME, convert_released

    if merge_lora and lora is None:
        fail("--merge-lora needs --lora DIR")
    start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            shown: list[tuple[Progress, TaskID]] = []

            def on_step(step: str, done: int, total: int) -> None:
                # The bar starts with the first step, so an error in the arguments prints only its one line.
                if not shown:
                    progress = stack.enter_context(progress_bar())
                    shown.append((progress, progress.add_task(step, total=total, status="")))
                progress, task = shown[0]
                progress.update(task, description=step, completed=done, total=total)
                if done < total:  # one line per step too, so a log file of a long run shows where it was
                    progress.console.print(f"[{done + 1}/{total}] {step}", markup=False, highlight=False)

            bundle = convert_released(
                lm_dir=lm,
                lora_dir=lora,
                hubert=hubert,
                kmeans=kmeans,
                vocoder=vocoder,
                vocoder_config=vocoder_config,
                out_dir=output,
                merge_lora=merge_lora,
                overwrite=overwrite,
                progress=on_step,
                num_units=num_units,
                link=link.value,
            )
    except USER_ERRORS as e:
        fail(_one_line(e), EXIT_USER_ERROR)
    except KeyboardInterrupt:
        stderr.print("interrupted; nothing written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    summary = {"bundle": str(bundle), **json.loads((bundle / CONVERSION_RECORD_NAME).read_text(encoding="utf-8"))}
    summary["seconds"] = round(time.perf_counter() - start, 2)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    stderr.print(f"wrote {bundle}: try `speechgpt chat --bundle {bundle}`")
