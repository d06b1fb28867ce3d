# %systemd_post: on first install apply the distribution's preset (RHEL's default preset leaves
# new services disabled: `systemctl enable --now apptheus` after setting ARGS).
if [ $1 -eq 1 ]; then
    systemctl --no-reload preset apptheus.service >/dev/null 2>&1 || :
fi
systemctl daemon-reload >/dev/null 2>&1 || :
