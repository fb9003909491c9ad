"""`lm compare`: the DVC experiments of a repository as one readable table (params that differ, headline
metrics with the baseline's, training cost), optionally as markdown or an offline HTML page with curves.

runs.py reads the experiments, table.py chooses and formats the columns, curves.py reads and draws the
curves at each experiment's revision, report.py writes the markdown and HTML files, command.py is the body
of the command. Nothing here imports torch.
"""
