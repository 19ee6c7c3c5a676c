# bash completion for ferry. Generated from its flags by `make man`; do not edit.
# Install: copy to /usr/share/bash-completion/completions/ferry, or source it.
_ferry() {
	local cur=${COMP_WORDS[COMP_CWORD]} cmd= sub= i
	for ((i = 1; i < COMP_CWORD; i++)); do
		if [[ -z $cmd ]]; then
			case ${COMP_WORDS[i]} in send|hash) cmd=${COMP_WORDS[i]} ;; esac
		fi
	done
	local flags= words=
	case $cmd/$sub in
	send/) flags='--to --dest --retries --backoff --timeout --chunk-size --window --bwlimit --checksum --links --update --token --token-file --quiet --verbose --json --fingerprint --known-hosts --help' words='' ;;
	hash/) flags='--help' words='' ;;
	*) flags='--help --version' words='send hash help' ;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
	elif [[ -n $words ]]; then
		COMPREPLY=($(compgen -W "$words" -- "$cur"))
	fi
}
complete -o default -o bashdefault -F _ferry ferry
