"""``speechgpt vocode``: unit ids -> 16 kHz WAV with the unit HiFi-GAN (released checkpoint or our folder)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from speechgpt.audio import AudioError
from speechgpt.serve._console import stderr, user_errors

# What can go wrong because of what the user gave (files, unit text, configs): one line, no traceback.
USER_ERRORS = (AudioError, FileNotFoundError, IsADirectoryError, ValueError)
UNITS_EXAMPLE = "<sosp><12><345><eosp>"


@dataclass(frozen=True)
class UnitsInput:
    """Units read from ``--units`` or ``--units-file``.

    Attributes:
        ids: Unit ids in order (range not yet checked against a vocoder).
        durations: Frames per unit when a JSON Lines record carried them, else None.
        label: Where the units came from, for messages.
    """

    ids: list[int]
    durations: list[int] | None
    label: str


def _int_list(value: object, label: str, field: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{label}: field {field!r} must be a list of integers")
    return value


def parse_record(line: str, label: str) -> UnitsInput:
    """Units (and durations) from one ``speechgpt units encode`` JSON record.

    Raises:
        ValueError: not JSON, not an object, no ``units`` list of ints, or ``durations`` of the wrong length.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{label}: not valid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(record, dict) or "units" not in record:
        raise ValueError(f"{label}: expected a JSON object with a 'units' list (from `speechgpt units encode`)")
    ids = _int_list(record["units"], label, "units")
    durations = None
    if record.get("durations") is not None:
        durations = _int_list(record["durations"], label, "durations")
        if len(durations) != len(ids):
            raise ValueError(f"{label}: 'durations' has {len(durations)} entries but 'units' has {len(ids)}")
    return UnitsInput(ids=ids, durations=durations, label=label)


def read_units(units: str | None, units_file: Path | None) -> UnitsInput:
    """Units from the command line: unit text (``<sosp><12>...<eosp>``, parsed tolerantly) or a file.

    A file holds either unit text or exactly one JSON Lines record from ``speechgpt units encode``.

    Raises:
        FileNotFoundError: ``units_file`` does not exist.
        ValueError: neither or both sources, unreadable file, several records, or no units at all.
    """
    from speechgpt.units.tokenizer import parse_units

    if (units is None) == (units_file is None):
        raise ValueError("give the units with exactly one of --units TEXT or --units-file FILE")
    if units_file is not None:
        if not units_file.is_file():
            raise FileNotFoundError(f"{units_file}: no such units file")
        try:
            text = units_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{units_file}: not UTF-8 text") from e
        label = str(units_file)
        if text.lstrip().startswith("{"):
            lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
            if len(lines) != 1:
                raise ValueError(
                    f"{units_file}: holds {len(lines)} JSON records; vocode one at a time "
                    f"(e.g. `sed -n 3p {units_file.name} > one.jsonl`)"
                )
            number, line = lines[0]
            parsed = parse_record(line, f"{units_file}:{number}")
            if not parsed.ids:
                raise ValueError(f"{parsed.label}: 'units' is empty")
            return parsed
    else:
        text, label = units or "", "--units"
    ids = parse_units(text)  # tolerant: malformed tokens are skipped; the range is checked once a vocoder is loaded
    if not ids:
        raise ValueError(f"no units found in {label} (expected text like {UNITS_EXAMPLE})")
    return UnitsInput(ids=ids, durations=None, label=label)


def check_range(parsed: UnitsInput, num_units: int) -> None:
    """Reject ids the vocoder does not know, naming the first one and the valid range.

    Raises:
        ValueError: an id is ``>= num_units``.
    """
    for position, unit in enumerate(parsed.ids):
        if not 0 <= unit < num_units:
            raise ValueError(
                f"{parsed.label}: unit <{unit}> (position {position}) is out of range; "
                f"this vocoder knows units <0>..<{num_units - 1}>"
            )


def _check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device!r} is not a torch device ({e})") from e
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")


def vocode(
    vocoder: Annotated[
        Path,
        typer.Option(
            "--vocoder",
            help="The released fairseq checkpoint file (e.g. `g_00500000`) or a vocoder folder of ours.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="WAV file to write (16-bit mono).", show_default=False)
    ],
    units: Annotated[
        str | None, typer.Option("--units", help=f"Unit text such as `{UNITS_EXAMPLE}`.", show_default=False)
    ] = None,
    units_file: Annotated[
        Path | None,
        typer.Option(
            "--units-file",
            help="A file with unit text, or one JSON record from `speechgpt units encode`.",
            show_default=False,
        ),
    ] = None,
    vocoder_config: Annotated[
        Path | None,
        typer.Option(
            "--vocoder-config",
            help="fairseq `config.json` of a checkpoint file (default: the architecture is read from the weights).",
            show_default=False,
        ),
    ] = None,
    no_dur_prediction: Annotated[
        bool,
        typer.Option(
            "--no-dur-prediction",
            help="Do not predict durations: use a JSON record's `durations`, or one 20 ms frame per unit.",
        ),
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0 (default: cuda when present).")
    ] = None,
) -> None:
    """Turn speech units into a 16 kHz WAV file.

    Unit text is read like model output: the units between `<sosp>` and `<eosp>` (or all `<N>` tokens when
    there is no `<sosp>`); malformed tokens are skipped, ids the vocoder does not know are an error.

    Durations: by default each unit's length is predicted (as SpeechGPT does). With `--no-dur-prediction`,
    a JSON record's `durations` (the frames each unit lasted in the encoded audio) are used, which resynthesises
    the original timing; unit text, or a record without durations, then gives one frame per unit.

    Examples:

      `speechgpt vocode --vocoder g_00500000 --units "<sosp><12><345><eosp>" -o reply.wav`

      `speechgpt units encode clip.wav --tokenizer runs/tokenizer > clip.jsonl`

      `speechgpt vocode --vocoder runs/vocoder --units-file clip.jsonl --no-dur-prediction -o resynth.wav`
    """
    from speechgpt.audio import write_wav
    from speechgpt.vocoder.base import load_vocoder
    from speechgpt.vocoder.hifigan import UnitHiFiGAN

    with user_errors(*USER_ERRORS):
        parsed = read_units(units, units_file)
        _check_device(device)
        if vocoder_config is not None and vocoder.is_dir():
            raise ValueError(
                f"--vocoder-config is only for a checkpoint file; {vocoder} is a folder with its own config"
            )
        if vocoder.is_file():
            model = UnitHiFiGAN.from_fairseq(vocoder, vocoder_config, device=device)
        else:  # our folders: the unit HiFi-GAN or the fast default vocoder
            model = load_vocoder(vocoder, device=device)
        check_range(parsed, model.num_units)
        if no_dur_prediction and parsed.durations is not None:
            wave = model.synthesize(parsed.ids, durations=parsed.durations)  # e.g. a duration < 1 in the record
        else:
            wave = model.synthesize(parsed.ids, dur_prediction=not no_dur_prediction)
        write_wav(output, wave.float().cpu(), sample_rate=model.sample_rate)
    seconds = wave.numel() / model.sample_rate
    stderr.print(f"wrote {output}: {len(parsed.ids)} units, {seconds:.2f} s")
