# %systemd_postun_with_restart: reload units; on upgrade restart a running agent (its store is
# written at stop and loaded at start).
systemctl daemon-reload >/dev/null 2>&1 || :
if [ $1 -ge 1 ]; then
    systemctl try-restart apptheus.service >/dev/null 2>&1 || :
fi
