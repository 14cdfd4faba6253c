"""Stage configs: released defaults, files, typed overrides, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from speechgpt.train.config import (
    ConfigError,
    Stage0Config,
    Stage1Config,
    Stage2Config,
    Stage3Config,
    TrainConfig,
    config_to_dict,
    load_config,
    parse_overrides,
)


def test_released_defaults() -> None:
    stage1 = Stage1Config()
    assert (stage1.max_length, stage1.packing) == (1024, True)
    stage2 = Stage2Config()
    assert (stage2.learning_rate, stage2.max_length, stage2.num_epochs, stage2.train_on_inputs) == (
        2e-5,
        512,
        3.0,
        False,
    )
    stage3 = Stage3Config()
    assert (stage3.lora_r, stage3.lora_alpha, stage3.lora_dropout) == (8, 16, 0.05)
    assert stage3.lora_target_modules == ("q_proj", "v_proj")
    assert (stage3.max_length, stage3.learning_rate, stage3.train_on_inputs) == (1024, 2e-5, False)
    stage0 = Stage0Config()
    assert (stage0.hidden_size, stage0.num_layers, stage0.num_heads) == (256, 4, 4)  # DESIGN's 3.5M model
    assert all(c().resume for c in (Stage0Config, Stage1Config, Stage2Config, Stage3Config))


def test_file_then_options_then_overrides(tmp_path) -> None:
    path = tmp_path / "stage2.yaml"
    path.write_text(
        "# a comment\ndata: train.jsonl\nlearning_rate: 2.0e-4\nbatch_size: 2\npacking: false\nmax_steps: 100\n",
        encoding="utf-8",
    )
    config = load_config(Stage2Config, path)
    assert (config.data, config.learning_rate, config.batch_size, config.packing, config.max_steps) == (
        "train.jsonl",
        2e-4,
        2,
        False,
        100,
    )
    config = load_config(
        Stage2Config,
        path,
        ["learning_rate=1e-3", "max_steps=none", "packing=yes", "warmup=10", "output_dir=runs/x"],
        batch_size=16,
        base_model=None,  # a flag not given
    )
    assert isinstance(config.learning_rate, float) and config.learning_rate == 1e-3  # YAML would read "1e-3" as text
    assert (config.max_steps, config.packing, config.warmup, config.batch_size) == (None, True, 10.0, 16)
    assert config.output_dir == "runs/x" and config.data == "train.jsonl"
    # --set wins over a flag.
    assert load_config(Stage2Config, None, ["batch_size=3"], batch_size=16).batch_size == 3


def test_json_file_and_tuple_values(tmp_path) -> None:
    path = tmp_path / "stage3.json"
    path.write_text(json.dumps({"lora_target_modules": ["q_proj", "k_proj", "v_proj"], "lora_r": 4}), encoding="utf-8")
    config = load_config(Stage3Config, path, ["lora_alpha=8"])
    assert config.lora_target_modules == ("q_proj", "k_proj", "v_proj")
    assert (config.lora_r, config.lora_alpha) == (4, 8)
    assert load_config(Stage3Config, overrides=["lora_target_modules=q_proj, o_proj"]).lora_target_modules == (
        "q_proj",
        "o_proj",
    )


def test_round_trip_through_yaml(tmp_path) -> None:
    config = load_config(Stage3Config, overrides=["lora_r=4", "data=x.jsonl", "max_steps=7"])
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)), encoding="utf-8")
    assert load_config(Stage3Config, path) == config


def test_unknown_keys_are_named_with_a_suggestion(tmp_path) -> None:
    with pytest.raises(
        ConfigError, match=r"--set: unknown key 'learning_rat' for Stage2Config \(did you mean 'learning_rate'\?\)"
    ):
        load_config(Stage2Config, overrides=["learning_rat=1e-3"])
    path = tmp_path / "c.yaml"
    path.write_text("lora_r: 8\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"c\.yaml: unknown key 'lora_r' for Stage2Config.*valid keys: data, output_dir"
    ):
        load_config(Stage2Config, path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=abc", "batch_size must be a whole number, got 'abc'"),
        ("batch_size=2.5", "batch_size must be a whole number"),
        ("packing=maybe", "packing must be true or false, got 'maybe'"),
        ("learning_rate=fast", "learning_rate must be a number"),
        ("learning_rate=-1", "learning_rate must be positive"),
        ("precision=fp8", "precision must be one of auto, fp32, bf16, fp16"),
        ("lr_scheduler=cyclic", "lr_scheduler must be one of"),
        ("attention=flash", "attention must be one of auto, segmented, sdpa, eager, flash_attention_2"),
        ("pack_length=100", "pack_length (100) must be at least max_length (512)"),
        ("max_steps=0", "max_steps must be positive"),
        ("warmup=2.5", "warmup must be a fraction below 1 or a whole number of steps"),
        ("output_dir=", "output_dir must not be empty"),
        ("device=cuda:3", "device must be cpu, cuda or none"),
        ("oops", "--set expects key=value, got 'oops'"),
        ("=3", "--set expects key=value"),
    ],
)
def test_bad_values_fail_clearly(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(Stage2Config, overrides=[override])


def test_stage_specific_checks(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"hidden_size \(100\) must be a multiple of num_heads \(3\)"):
        load_config(Stage0Config, overrides=["hidden_size=100", "num_heads=3"])
    with pytest.raises(ConfigError, match=r"max_length \(4096\) exceeds max_position_embeddings \(2048\)"):
        Stage0Config(max_length=4096)
    with pytest.raises(ConfigError, match="reshuffle_lines needs packing"):
        load_config(Stage0Config, overrides=["reshuffle_lines=true", "packing=false"])
    with pytest.raises(ConfigError, match=r"lora_dropout must be in \[0, 1\)"):
        Stage3Config(lora_dropout=1.5)
    with pytest.raises(ConfigError, match="lora_target_modules must name at least one module"):
        load_config(Stage3Config, overrides=["lora_target_modules=,"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
        load_config(Stage1Config, tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot parse"):
        (tmp_path / "bad.json").write_text("{", encoding="utf-8")
        load_config(Stage1Config, tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml does not exist"):
        load_config(Stage1Config, tmp_path / "nope.yaml")
    # Direct construction is checked too (strings from elsewhere are converted or refused).
    assert TrainConfig(batch_size="8").batch_size == 8  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="grad_accum must be positive"):
        TrainConfig(grad_accum=0)


def test_parse_overrides_last_wins_and_dashes() -> None:
    assert parse_overrides(["a=1", "max-steps=5", "a=2", "x= y "]) == {"a": "2", "max_steps": "5", "x": "y"}


def test_config_and_estimate_modules_import_without_torch() -> None:
    code = (
        "import sys; import speechgpt.train.config, speechgpt.train.estimate; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["single", "ddp", "fsdp", "zero3"])
def test_shipped_accelerate_configs_parse_with_accelerate(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    from speechgpt.train import accelerate_config

    path = accelerate_config(name)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    parsed = ClusterConfig.from_yaml_file(str(path))  # accelerate's own reader: refuses unknown keys
    expected = {"single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}[name]
    assert str(parsed.distributed_type.value) == expected == raw["distributed_type"]
    assert parsed.compute_environment.value == "LOCAL_MACHINE" and parsed.num_machines == 1
    assert path.read_text(encoding="utf-8").startswith("#")  # starts with how to launch it
    if name == "zero3":
        assert raw["deepspeed_config"]["zero_stage"] == 3 and raw["deepspeed_config"]["zero3_save_16bit_model"]
        assert raw["mixed_precision"] == "bf16"


def test_fsdp_config_gives_full_shard_of_llama_decoder_layers(monkeypatch) -> None:
    """Run accelerate's launcher logic on fsdp.yaml and build the FSDP plugin from the environment it sets."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import ShardingStrategy

    from speechgpt.train import accelerate_config

    args = launch_command_parser().parse_args(["--config_file", str(accelerate_config("fsdp")), "train.py"])
    args = _validate_launch_command(args)[0]
    assert args.use_fsdp and args.num_processes == 8
    env = prepare_multi_gpu_env(args)
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")  # broadcasting needs a GPU to build the plugin here
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.use_orig_params and not plugin.cpu_offload.offload_params
