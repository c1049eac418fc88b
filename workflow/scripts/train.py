from pathlib import Path

from pipeline.io import logged
from pipeline.stages import train

with logged(snakemake.log[0]):
    inputs = {k: snakemake.input[k] for k in ("inputs", "normalized", "crops", "reports", "embed", "concepts")}
    spec = train.write_spec(Path(snakemake.output.model).parent / "spec.json", inputs, snakemake.params.cfg,
                            snakemake.input.teacher)
    train.launch(spec, snakemake.params.cfg["nproc_per_node"], snakemake.threads, snakemake.log[0])
