"""Jobs: the command line, its output, submission, scheduling, the cluster's config."""
