"""deemd: the library behind the DEEMD workflow.

Small, pure functions that take arrays and tables and return arrays and tables.
The Snakemake scripts in ``workflow/scripts`` are thin glue around them.
"""
