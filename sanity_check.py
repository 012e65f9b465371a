"""Run only the pre-flight checks, with train.py's config: ``python sanity_check.py model=resnet20 data=cifar10``.

Prints the table (training/sanity.py says what each check does) and exits 1 naming the failed checks.
"""
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cli.compose import SanityError, build_trainer, sanity_check
from cli.entry import command, run


@command("train")
def main(cfg: DictConfig) -> None:
    report = sanity_check(build_trainer(cfg, HydraConfig.get().runtime.output_dir), cfg)
    print(report.table())
    if not report.passed:
        raise SanityError(f"sanity check failed: {report.summary()}")


if __name__ == "__main__":
    run(main)
