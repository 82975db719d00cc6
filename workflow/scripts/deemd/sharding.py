"""How the inference of one model is cut into jobs (docs/method.md §7): plates, parts of a
plate, or several plates a job. Torch-free: the Snakefile plans the jobs with it."""

from __future__ import annotations


def inference_batches(plates: list[str], plates_per_job: int, shards_per_plate: int) -> dict[str, list[list]]:
    """The infer jobs of one model: job (batch) name -> the [plate_id, part] shards it
    scores, in plate order. ``plates_per_job`` 1: one job per plate part,
    "{plate_id}.part{part}" (``shards_per_plate`` parts a plate); 0: one job for every
    plate, "all_plates"; N: N whole plates a job, "plates1", "plates2", ... Parts of a plate
    need one plate a job (anything else is a ValueError)."""
    if plates_per_job < 0 or shards_per_plate < 1:
        raise ValueError(f"plates_per_job {plates_per_job} and shards_per_plate {shards_per_plate}: need >= 0 and >= 1")
    if plates_per_job == 1:
        return {f"{plate}.part{part}": [[plate, part]] for plate in plates for part in range(shards_per_plate)}
    if shards_per_plate != 1:
        raise ValueError(f"{shards_per_plate} parts a plate need one plate a job, not {plates_per_job}")
    if plates_per_job == 0:
        return {"all_plates": [[plate, 0] for plate in plates]} if plates else {}
    return {f"plates{start // plates_per_job + 1}": [[plate, 0] for plate in plates[start : start + plates_per_job]]
            for start in range(0, len(plates), plates_per_job)}


def shard_rows(table, part: int, parts: int):
    """Rows of one of ``parts`` shards of a plate: whole wells, wells dealt round-robin in
    order, so shards are balanced and a site never moves between shards."""
    if not 0 <= part < parts:
        raise ValueError(f"shard part {part} is outside 0..{parts - 1}")
    wells = sorted(table["well"].unique())
    chosen = set(wells[part::parts])
    return table[table["well"].isin(chosen)].reset_index(drop=True)
