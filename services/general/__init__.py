"""The general bundle topic: the bundle topic without behavioural-health, substance-use / Part 2 or note
content, for vendors without behavioural-health clearance (``python -m services.general``)."""
