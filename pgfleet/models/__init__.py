"""Model versions and their A/B tests: looking a version up and registering one, the split
and routing by it, inference logs, and the statistics the A/B report is made of."""
