"""Fair comparisons: every arm tuned with the same trial budget on a label-free rule fixed in advance,
the chosen configuration re-run on evaluation seeds disjoint from the tuning seeds (`tlbench compare`)."""
