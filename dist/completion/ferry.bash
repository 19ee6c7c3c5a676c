# bash completion for ferry. Generated from its flags by `make man`; do not edit.
# Install: copy to /usr/share/bash-completion/completions/ferry, or source it.
_ferry() {
	local cur=${COMP_WORDS[COMP_CWORD]} cmd= i
	for ((i = 1; i < COMP_CWORD; i++)); do
		case ${COMP_WORDS[i]} in
		send|hash) cmd=${COMP_WORDS[i]}; break ;;
		esac
	done
	local flags
	case $cmd in
	send) flags='--to --dest --retries --backoff --timeout --chunk-size --window --bwlimit --checksum --update --quiet --verbose --json --fingerprint --known-hosts --help' ;;
	hash) flags='--help' ;;
	*)
		if [[ $cur != -* ]]; then
			COMPREPLY=($(compgen -W 'send hash help' -- "$cur"))
			return
		fi
		flags='--help --version' ;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
	fi
}
complete -o default -o bashdefault -F _ferry ferry
