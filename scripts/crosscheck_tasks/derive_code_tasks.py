"""Write the cross-check's humaneval and mbpp task files from lm-eval's own (run by the lm-eval
venv's Python from scripts/crosscheck_suite.py).

    python derive_code_tasks.py LM_EVAL_TASKS_DIR OUT_DIR DATA_FILES_JSON

lm-eval's humaneval/mbpp utils.py call `evaluate.load("code_eval")` when imported, which needs
the hub, so their YAMLs cannot be loaded offline. This reads each YAML without running its
`!function` tags, keeps every key (prompt, target, delimiters, generation settings, few-shot
config), takes MBPP's exemplars from `list_fewshot_samples` in utils.py by reading its source
(ast.literal_eval of the returned list, nothing imported), and replaces only what needs
code_eval: the metric becomes `bypass` (generations are logged, not scored) and humaneval's
`create_test` filter (which only feeds code_eval) is dropped."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import yaml


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: {"__function__": loader.construct_scalar(node)})


def fewshot_samples(utils: Path) -> list:
    tree = ast.parse(utils.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    return ast.literal_eval(ret.value)


def main(tasks_dir: str, out_dir: str, data_files: str) -> int:
    tasks, out, files = Path(tasks_dir), Path(out_dir), json.loads(data_files)
    for name in ("humaneval", "mbpp"):
        cfg = yaml.load((tasks / name / f"{name}.yaml").read_text(), Loader=_Loader)
        cfg["task"] = f"xc_{name}"
        cfg.update({"dataset_path": "json", "dataset_name": None,
                    "dataset_kwargs": {"data_files": {"test": files[name]}}, "test_split": "test"})
        cfg["metric_list"] = [{"metric": "bypass"}]
        cfg.pop("filter_list", None)
        if name == "mbpp":
            cfg["fewshot_config"]["samples"] = fewshot_samples(tasks / name / "utils.py")
        (out / f"{name}.yaml").write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
