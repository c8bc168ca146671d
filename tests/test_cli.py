"""The command line: argument parsing that every subcommand shares."""
from toolace_r.cli import parse_args


def test_overrides_after_eval_data_are_overrides_not_specs():
    args = parse_args(["eval", "--model", "oracle:gold", "--data", "builtin", "bfcl:pkg", "eval.num_actors=0",
                       "eval.limit=5"])
    assert args.data == ["builtin", "bfcl:pkg"]
    assert args.overrides == ["eval.num_actors=0", "eval.limit=5"]


def test_overrides_before_data_and_paths_with_equals_signs_inside_stay_put():
    args = parse_args(["eval", "eval.limit=5", "--data", "/data/run=3/bfcl.json", "apibank:DIR"])
    assert args.data == ["/data/run=3/bfcl.json", "apibank:DIR"]
    assert args.overrides == ["eval.limit=5"]
