"""Studies over many runs: sweep grids and presets, report tables, and docs/RESULTS.md's readings study.

  sweep_grid, sweep_presets           the sweeps (`experiments.sweep`), named rows of settings
  report_tables, report_compare       per-setting tables and methods x settings (`experiments.report`)
  report_readings, readings_stats, readings_verdicts   docs/RESULTS.md
"""
