# bash completion for ferryd. Generated from its flags by `make man`; do not edit.
# Install: copy to /usr/share/bash-completion/completions/ferryd, or source it.
_ferryd() {
	local cur=${COMP_WORDS[COMP_CWORD]} cmd= i
	for ((i = 1; i < COMP_CWORD; i++)); do
		case ${COMP_WORDS[i]} in
		partials|fingerprint) cmd=${COMP_WORDS[i]}; break ;;
		esac
	done
	local flags
	case $cmd in
	partials) flags='--root --json --help' ;;
	fingerprint) flags='--root --tls-cert --tls-key --help' ;;
	*)
		if [[ $cur != -* ]]; then
			COMPREPLY=($(compgen -W 'partials fingerprint help' -- "$cur"))
			return
		fi
		flags='--listen --root --sync-bytes --sync-interval --idle-timeout --max-size --min-free --max-sessions --max-sessions-per-ip --min-rate --min-rate-window --max-pending --handshake-timeout --max-rate --max-chunk-size --shutdown-timeout --direct-io --metrics-listen --partial-ttl --log-level --log-format --tls-cert --tls-key --help --version' ;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
	fi
}
complete -o default -o bashdefault -F _ferryd ferryd
