# bash completion for ferryd. Generated from its flags by `make man`; do not edit.
# Install: copy to /usr/share/bash-completion/completions/ferryd, or source it.
_ferryd() {
	local cur=${COMP_WORDS[COMP_CWORD]} cmd= sub= i
	for ((i = 1; i < COMP_CWORD; i++)); do
		if [[ -z $cmd ]]; then
			case ${COMP_WORDS[i]} in partials|token|fingerprint) cmd=${COMP_WORDS[i]} ;; esac
		elif [[ -z $sub ]]; then
			case $cmd/${COMP_WORDS[i]} in partials/purge|token/add|token/list|token/revoke) sub=${COMP_WORDS[i]} ;; esac
		fi
	done
	local flags= words=
	case $cmd/$sub in
	partials/purge) flags='--root --older-than --help' ;;
	partials/) flags='--root --json --help' words='purge' ;;
	token/add) flags='--root --tokens --dest --max-size --quota --overwrite --help' ;;
	token/list) flags='--root --tokens --json --help' ;;
	token/revoke) flags='--root --tokens --help' ;;
	token/) flags='--help' words='add list revoke' ;;
	fingerprint/) flags='--root --tls-cert --tls-key --help' words='' ;;
	*) flags='--listen --root --store --s3-endpoint --s3-region --s3-lease-ttl --sync-bytes --sync-interval --idle-timeout --max-size --min-free --max-sessions --max-sessions-per-ip --min-rate --min-rate-window --max-pending --handshake-timeout --max-rate --max-chunk-size --shutdown-timeout --direct-io --preallocate --metrics-listen --partial-ttl --tokens --allow-anonymous --log-level --log-format --tls-cert --tls-key --help --version' words='partials token fingerprint help' ;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
	elif [[ -n $words ]]; then
		COMPREPLY=($(compgen -W "$words" -- "$cur"))
	fi
}
complete -o default -o bashdefault -F _ferryd ferryd
