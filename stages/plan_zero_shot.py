"""Stage plan-zero-shot: params `zero_shot` -> <train> and <evaluate>, the settings the zero-shot measurements of
the train and evaluate stages read ({} when they measure nothing), each measured task's file checked first.

The two stages depend on these files instead of the zero_shot keys: DVC reruns this stage on any change of the
section, and the train or evaluate stage only when its file changed.
"""

from gptcore.pipelines import pretrain
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "train", "evaluate")
    plans = pretrain.plan_zero_shot(params, train_file=args.train, evaluate_file=args.evaluate)
    for stage, settings in plans.items():
        tasks = settings.get("train_tasks" if stage == "train" else "tasks")
        print(f"{stage}: {'measures ' + ', '.join(tasks) if tasks else 'no zero-shot task'}")


if __name__ == "__main__":
    run_stage(main)
