"""The README stays a user's guide that is true: short, its table of commands near the top, and every
command in it named here with the test or script that runs it (a new command needs its test first)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# the start of each README command -> the test (file::function) or the script that runs it
RUN_BY = {
    "python3 -m venv .venv": ".ci/run",
    "python -m pytest -q": ".ci/run",
    "dvc repro": "tests/test_pipeline.py::test_repro_runs_every_stage_and_tracks_one_run",
    "dvc exp run -n lr-1e-3 -S train.peak_lr=1e-3": "tests/test_pipeline.py::test_experiment_is_listed_by_dvc_and_named_in_mlflow",
    "dvc exp show --only-changed":
        "tests/test_pipeline.py::test_dvc_exp_show_fits_120_columns_with_the_headline_metrics_beside_the_changed_params",
    "dvc metrics diff":
        "tests/test_pipeline.py::test_dvc_exp_show_fits_120_columns_with_the_headline_metrics_beside_the_changed_params",
    "dvc repro tokenize plan-zero-shot": "tests/test_ops.py::test_a_queued_grid_runs_two_at_a_time_into_one_store",
    "dvc exp run --queue -S 'train.peak_lr=choice(3e-4,1e-3)' -S 'train.seed=range(1,3)'":
        "tests/test_ops.py::test_a_queued_grid_runs_two_at_a_time_into_one_store",
    "dvc queue start -j 2": "tests/test_ops.py::test_a_queued_grid_runs_two_at_a_time_into_one_store",
    "dvc queue status": "tests/test_ops.py::test_a_queued_grid_runs_two_at_a_time_into_one_store",
    "dvc repro stages/classify/dvc.yaml":
        "tests/test_classify_pipeline.py::test_the_pipeline_writes_the_books_splits_its_metrics_and_one_tracked_run",
    "dvc exp run stages/classify/dvc.yaml -n lora16 -S classify_lora.rank=16":
        "tests/test_classify_pipeline.py::test_lora_is_one_experiment_away",
    "dvc repro stages/instruct/dvc.yaml":
        "tests/test_instruct_pipeline.py::test_the_pipeline_writes_the_books_splits_responses_and_metrics_in_one_tracked_run",
    "dvc repro stages/preference/dvc.yaml": "tests/test_preference_pipeline.py::"
        "test_the_pipeline_tunes_the_instruction_model_and_reports_rewards_beside_its_params",
    "dvc exp run -n mydata -S data.source=":
        "tests/test_recipe.py::test_the_recipe_trains_a_few_steps_on_a_small_parquet_set",
    "dvc exp run -n gpt2-124m $(gptcore recipe gpt2-124m)":
        "tests/test_recipe.py::test_the_recipe_prints_one_shell_word_per_option",
    "dvc exp run -n finetune -S model.init_from=":
        "tests/test_pipeline.py::test_fine_tunes_from_a_locally_saved_hugging_face_folder",
    "dvc exp run -S 'zero_shot.tasks=[lambada]'":
        "tests/test_pipeline.py::test_zero_shot_tasks_are_evaluated_without_training_again",
    "gptcore eval --tasks lambada --model": "tests/test_zero_shot.py::test_cli_prints_the_table_and_writes_the_results",
    "gptcore generate": "tests/test_cli_and_bench.py::test_generate_streams_the_greedy_continuation",
    "gptcore classify": "tests/test_classify_pipeline.py::test_the_registered_classifier_serves_what_gptcore_classify_prints",
    "gptcore instruct":
        "tests/test_instruct_pipeline.py::test_the_registered_instruction_model_serves_what_gptcore_instruct_prints",
    "gptcore ui": "tests/test_ui.py::test_gptcore_ui_opens_the_chart_view_of_the_projects_runs",
    "MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db mlflow models serve":
        "tests/test_ops.py::test_registered_model_loads_and_serves_the_text_of_gptcore_generate",
    "curl -X POST http://127.0.0.1:5001/invocations":
        "tests/test_ops.py::test_registered_model_loads_and_serves_the_text_of_gptcore_generate",
    "dvc remote add -d storage": "tests/test_ops.py::test_data_and_models_travel_through_a_dvc_remote",
    "dvc push": "tests/test_ops.py::test_data_and_models_travel_through_a_dvc_remote",
    "dvc pull dvc.yaml": "tests/test_ops.py::test_data_and_models_travel_through_a_dvc_remote",
    "gptcore --help": "tests/test_cli_and_bench.py::test_help_for_every_command",
    "gptcore <command> --help": "tests/test_cli_and_bench.py::test_help_for_every_command",
    "gptcore export-hf": "tests/test_cli_and_bench.py::test_export_hf_then_generate_from_the_hf_folder",
    "gptcore export-hf data/instruct/model":
        "tests/test_export.py::test_an_instruction_model_exports_its_template_as_the_chat_template_and_decodes_greedy_as_gptcore",
    "gptcore export-hf data/classifier/model":
        "tests/test_export.py::test_a_classifier_exports_as_sequence_classification_and_scores_what_gptcore_classify_prints",
    "gptcore export-gguf":
        "tests/test_gguf.py::test_an_instruction_models_gguf_keeps_its_chat_template_and_its_modelfile_ollamas_template",
    "python -c \"from transformers import pipeline;":
        "tests/test_export.py::test_transformers_pipeline_generates_greedy_what_gptcore_generate_prints",
    "gptcore generate --temperature 0 --weights fp32":
        "tests/test_export.py::test_transformers_pipeline_generates_greedy_what_gptcore_generate_prints",
    "dvc exp run stages/instruct/dvc.yaml -S instruct_export.gguf=q8_0": "tests/test_instruct_pipeline.py::"
        "test_the_export_stage_writes_a_gguf_and_hugging_face_folder_when_asked_one_copy_shared_with_mlflow",
    "python -m llama_cpp.server": "tests/test_gguf.py::"
        "test_llama_cpps_openai_server_serves_the_instruction_model_to_the_openai_client_and_the_judge",
    "ollama create":  # Ollama cannot be installed on these machines: its Modelfile is checked as text
        "tests/test_gguf.py::test_an_instruction_models_gguf_keeps_its_chat_template_and_its_modelfile_ollamas_template",
    "gptcore export-lfs": "tests/test_book.py::test_export_lfs_loads_strictly_into_the_books_gptmodel_with_equal_logits",
    "gptcore info": "tests/test_cli_and_bench.py::test_info_reports_parameters_and_config",
    "gptcore bench --corpus": "tests/test_cli_and_bench.py::test_benchmark_measures_every_row_side_by_side",
}
COMMAND = re.compile(r"(dvc|gptcore|mlflow|ollama|python3?|curl|pip|MLFLOW_TRACKING_URI=\S+) ")


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks (continuations joined, comments cut) and those quoted in its
    tables and text."""
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [re.sub(r"\s+#.*", "", line).strip() for line in "\n".join(blocks).replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [command for command in lines + re.findall(r"`([^`]+)`", prose) if COMMAND.match(command)]


def runner(command: str) -> str:
    starts = [start for start in RUN_BY if command == start or command.startswith(start + " ") or
              (start.endswith("=") and command.startswith(start))]
    assert starts, f"README command {command!r} names no test or script that runs it (tests/test_readme.py)"
    return RUN_BY[max(starts, key=len)]


def test_every_readme_command_is_run_by_a_test_or_script():
    commands = readme_commands()
    assert len(commands) > 20
    for command in commands:
        path, _, test = runner(command).partition("::")
        source = (REPO / path).read_text()
        assert (f"def {test}(" in source) if test else command.split()[0] in source, (command, path, test)
    unused = set(RUN_BY) - {start for command in commands for start in RUN_BY if command.startswith(start)}
    assert not unused, f"no README command starts with {sorted(unused)}: remove them from RUN_BY"


def test_the_readme_is_short_with_its_table_of_commands_near_the_top_and_its_links_true():
    text = README.read_text()
    assert len(text.encode()) < 16_000
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:2] == ["Quick start", "What you can run"]
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)", text):
        assert (REPO / target).is_file(), target
    anchors = {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-") for heading in headings}
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, anchor


def test_the_readme_says_what_its_model_examples_answer_and_which_precision_is_the_harnesss():
    """Its examples were ones the README's own models get wrong, without a word (the classifier called its spam
    example ham, the instruction model repeated a phrase), and `gptcore eval` matches the harness only in fp32."""
    text = " ".join(README.read_text().split())
    for example in ('gptcore classify "URGENT! Your mobile number has won a 2000 prize. Call 09050000301 to claim. '
                    'T&C apply"` gives spam 0.9999', '"You won a free cruise! Call now", comes out ham (0.72)',
                    'gptcore instruct "Name three primary colors."` gives "The chemical formula for'):
        assert example in text, example
    assert "The harness's numbers come back with `--precision fp32`" in text
