"""Pictures and pages of results: comparison panels, the HTML report of a test run, metric curves."""
