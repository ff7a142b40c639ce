"""The web dashboard coordd serves on `dashboard_listen`: jobs, re-formations, goodput,
nodes, live logs. See docs/dashboard.md."""
